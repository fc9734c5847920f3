//! The PROXY protocol (HAProxy's, versions 1 and 2): read from clients when
//! an L4 balancer stands in front (`--accept-proxy-protocol`), written to
//! upstreams ahead of each connection (`--send-proxy-protocol`).

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12-byte signature of a version 2 header.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest version 1 header, CRLF included.
const V1_MAX: usize = 107;
/// Longest version 2 address block (and TLVs) read; more is refused.
const V2_MAX_BODY: usize = 1024;

/// Which version to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProxyVersion {
    /// The text form: `PROXY TCP4 <src> <dst> <sport> <dport>\r\n`.
    V1,
    /// The binary form.
    V2,
}

/// A header that is not the PROXY protocol.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The connection closed or failed while the header was read.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a PROXY protocol header.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
}

/// Reads one PROXY header (v1 or v2) from the start of `stream`, reading
/// no byte past it: the client address it carries, or `None` for a
/// `LOCAL`/`UNKNOWN` header (a health check of the balancer in front).
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut start = [0u8; 8];
    stream.read_exact(&mut start).await?;
    if start == V2_SIGNATURE[..8] {
        let mut rest = [0u8; 8];
        stream.read_exact(&mut rest).await?;
        if rest[..4] != V2_SIGNATURE[8..] {
            return Err(ProxyHeaderError::Malformed("bad v2 signature"));
        }
        let length = usize::from(u16::from_be_bytes([rest[6], rest[7]]));
        if length > V2_MAX_BODY {
            return Err(ProxyHeaderError::Malformed("v2 header too long"));
        }
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).await?;
        return parse_v2(rest[4], rest[5], &body);
    }
    if &start[..6] != b"PROXY " {
        return Err(ProxyHeaderError::Malformed("no PROXY signature"));
    }
    // Byte by byte up to the CRLF, so nothing of the request is consumed.
    let mut line = start.to_vec();
    while !line.ends_with(b"\r\n") {
        if line.len() >= V1_MAX {
            return Err(ProxyHeaderError::Malformed("v1 header too long"));
        }
        line.push(stream.read_u8().await?);
    }
    parse_v1(&line[..line.len() - 2])
}

fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let text = std::str::from_utf8(line).map_err(|_| ProxyHeaderError::Malformed("not ASCII"))?;
    let fields: Vec<&str> = text.split(' ').collect();
    match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(None),
        [
            "PROXY",
            family @ ("TCP4" | "TCP6"),
            source,
            _destination,
            source_port,
            _port,
        ] => {
            let ip: IpAddr = source
                .parse()
                .map_err(|_| ProxyHeaderError::Malformed("bad v1 source address"))?;
            if ip.is_ipv4() != (*family == "TCP4") {
                return Err(ProxyHeaderError::Malformed("v1 family and address differ"));
            }
            let port: u16 = source_port
                .parse()
                .map_err(|_| ProxyHeaderError::Malformed("bad v1 source port"))?;
            Ok(Some(SocketAddr::new(ip, port)))
        }
        _ => Err(ProxyHeaderError::Malformed("bad v1 fields")),
    }
}

fn parse_v2(
    version_command: u8,
    family: u8,
    body: &[u8],
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    if version_command >> 4 != 2 {
        return Err(ProxyHeaderError::Malformed("not version 2"));
    }
    match version_command & 0x0f {
        0 => return Ok(None),
        1 => {}
        _ => return Err(ProxyHeaderError::Malformed("bad v2 command")),
    }
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    match family {
        0x11 | 0x12 if body.len() >= 12 => {
            let ip: [u8; 4] = body[..4].try_into().unwrap_or_default();
            Ok(Some(SocketAddr::new(IpAddr::from(ip), port(8))))
        }
        0x21 | 0x22 if body.len() >= 36 => {
            let ip: [u8; 16] = body[..16].try_into().unwrap_or_default();
            Ok(Some(SocketAddr::new(IpAddr::from(ip), port(32))))
        }
        0x00 => Ok(None),
        _ => Err(ProxyHeaderError::Malformed("unsupported v2 address family")),
    }
}

/// The header announcing a connection from `source` to `destination`, or
/// with neither, a `LOCAL`/`UNKNOWN` one (the balancer's own health checks).
pub fn encode(version: ProxyVersion, addrs: Option<(SocketAddr, SocketAddr)>) -> Vec<u8> {
    // Mixed families cannot be said; map IPv4 into IPv6 then.
    let addrs = addrs.map(|(source, destination)| {
        if source.is_ipv4() == destination.is_ipv4() {
            (source, destination)
        } else {
            (as_v6(source), as_v6(destination))
        }
    });
    match version {
        ProxyVersion::V1 => match addrs {
            None => b"PROXY UNKNOWN\r\n".to_vec(),
            Some((source, destination)) => format!(
                "PROXY {} {} {} {} {}\r\n",
                if source.is_ipv4() { "TCP4" } else { "TCP6" },
                source.ip(),
                destination.ip(),
                source.port(),
                destination.port()
            )
            .into_bytes(),
        },
        ProxyVersion::V2 => {
            let mut header = V2_SIGNATURE.to_vec();
            match addrs {
                None => header.extend_from_slice(&[0x20, 0x00, 0, 0]),
                Some((source, destination)) => {
                    let mut body = Vec::with_capacity(36);
                    let family = match (source.ip(), destination.ip()) {
                        (IpAddr::V4(s), IpAddr::V4(d)) => {
                            body.extend_from_slice(&s.octets());
                            body.extend_from_slice(&d.octets());
                            0x11
                        }
                        (s, d) => {
                            body.extend_from_slice(&to_v6(s).octets());
                            body.extend_from_slice(&to_v6(d).octets());
                            0x21
                        }
                    };
                    body.extend_from_slice(&source.port().to_be_bytes());
                    body.extend_from_slice(&destination.port().to_be_bytes());
                    header.extend_from_slice(&[0x21, family]);
                    header.extend_from_slice(&(body.len() as u16).to_be_bytes());
                    header.extend_from_slice(&body);
                }
            }
            header
        }
    }
}

fn to_v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

fn as_v6(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(to_v6(addr.ip())), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> (Result<Option<SocketAddr>, String>, Vec<u8>) {
        let mut reader = bytes;
        let result = read_header(&mut reader).await.map_err(|e| e.to_string());
        (result, reader.to_vec())
    }

    #[tokio::test]
    async fn what_is_encoded_reads_back_and_the_request_is_left_alone() {
        let source: SocketAddr = "203.0.113.7:51000".parse().unwrap();
        let destination: SocketAddr = "10.0.0.1:443".parse().unwrap();
        let source6: SocketAddr = "[2001:db8::7]:51000".parse().unwrap();
        for version in [ProxyVersion::V1, ProxyVersion::V2] {
            for (s, d) in [(source, destination), (source6, as_v6(destination))] {
                let mut bytes = encode(version, Some((s, d)));
                bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
                let (result, rest) = read(&bytes).await;
                assert_eq!(result, Ok(Some(s)), "{version:?}");
                assert_eq!(rest, b"GET / HTTP/1.1\r\n");
            }
            let (result, _) = read(&encode(version, None)).await;
            assert_eq!(result, Ok(None));
        }
        assert_eq!(
            encode(ProxyVersion::V1, Some((source, destination))),
            b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n"
        );
    }

    #[tokio::test]
    async fn malformed_headers_are_refused() {
        for bad in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n",
            b"PROXY TCP4 1.2.3.4",
        ] {
            let (result, _) = read(bad).await;
            assert!(result.is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(200));
        assert!(read(long.as_bytes()).await.0.is_err());
    }
}
