//! What a request must be before it is forwarded (the checks nginx makes
//! too): no CONNECT, exactly one valid `Host` in HTTP/1.1 (at most one
//! otherwise), request line and header lines within `--max-header-line-bytes`,
//! the whole head within `--max-header-bytes`.

use axum::http::header;
use axum::http::uri::Authority;
use axum::http::{Method, Request, Version};

use super::answer::{Failure, FailureKind};

/// Size limits of a request head.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Longest request line or header line (name, `: `, value).
    pub max_line: usize,
    /// Longest head: request line and every header line.
    pub max_total: usize,
}

/// Bytes of CRLF and `: ` around each header line.
const LINE_OVERHEAD: usize = 4;
/// Bytes of the spaces, version and CRLF of a request line.
const REQUEST_LINE_OVERHEAD: usize = 12;

impl HeadLimits {
    /// The size a request line with this method and target counts for.
    pub fn request_line(method: usize, target: usize) -> usize {
        method + target + REQUEST_LINE_OVERHEAD
    }

    /// The size a header line with this name and value counts for.
    pub fn header_line(name: usize, value: usize) -> usize {
        name + value + LINE_OVERHEAD
    }
}

/// Whether a `Host` value is a host and optional port, with no userinfo.
pub fn is_valid_host(value: &[u8]) -> bool {
    Authority::try_from(value).is_ok_and(|authority| is_host_and_port(&authority))
}

/// Whether `authority` has no userinfo, and a port (if any) in range.
fn is_host_and_port(authority: &Authority) -> bool {
    let text = authority.as_str();
    // Past the host: nothing, a bare `:`, or `:` and the port's digits.
    let port = text.get(authority.host().len()..).unwrap_or_default();
    let port_ok = match port.strip_prefix(':') {
        None => port.is_empty(),
        Some("") => true,
        Some(digits) => {
            digits.bytes().all(|b| b.is_ascii_digit()) && authority.port_u16().is_some()
        }
    };
    !text.contains('@') && port_ok
}

/// Checks `request`'s head; the failure closes the connection.
pub fn check<B>(request: &Request<B>, limits: HeadLimits) -> Result<(), Failure> {
    check_head(request, limits).map_err(Failure::closing)
}

fn check_head<B>(request: &Request<B>, limits: HeadLimits) -> Result<(), Failure> {
    if request.method() == Method::CONNECT {
        return Err(Failure::new(
            FailureKind::MethodNotAllowed,
            "CONNECT is not supported",
        ));
    }
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |path| path.as_str().len())
        + request.uri().authority().map_or(0, |a| a.as_str().len());
    let request_line = HeadLimits::request_line(request.method().as_str().len(), target);
    if request_line > limits.max_line {
        return Err(Failure::new(
            FailureKind::UriTooLong,
            format!("the request line is over {} bytes", limits.max_line),
        ));
    }
    let mut total = request_line;
    for (name, value) in request.headers() {
        let line = HeadLimits::header_line(name.as_str().len(), value.len());
        if line > limits.max_line {
            return Err(Failure::new(
                FailureKind::HeaderTooLarge,
                format!("a header line is over {} bytes", limits.max_line),
            ));
        }
        total += line;
    }
    if total > limits.max_total {
        return Err(Failure::new(
            FailureKind::HeaderTooLarge,
            format!("the request head is over {} bytes", limits.max_total),
        ));
    }
    // An absolute-form target (or HTTP/2's `:authority`) names the host
    // the upstream gets, in place of the Host header: the same rules.
    if let Some(authority) = request.uri().authority()
        && !is_host_and_port(authority)
    {
        return Err(bad_host("the request target's host is not a host[:port]"));
    }
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(bad_host("more than one Host header"));
    }
    match host {
        None if request.version() == Version::HTTP_11 => Err(bad_host("no Host header")),
        None => Ok(()),
        Some(host) if is_valid_host(host.as_bytes()) => Ok(()),
        Some(_) => Err(bad_host("the Host header is not a host[:port]")),
    }
}

fn bad_host(message: &str) -> Failure {
    Failure::new(FailureKind::BadHost, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_line: 100,
        max_total: 200,
    };

    fn code(request: Request<()>) -> Option<(u16, &'static str)> {
        check(&request, LIMITS)
            .err()
            .map(|failure| (failure.status().as_u16(), failure.kind.code()))
    }

    fn get() -> axum::http::request::Builder {
        Request::builder().uri("/").version(Version::HTTP_11)
    }

    #[test]
    fn host_must_be_there_once_and_valid_in_http_1_1() {
        assert_eq!(code(get().header("host", "a").body(()).unwrap()), None);
        assert_eq!(code(get().body(()).unwrap()), Some((400, "bad_host")));
        let two = get()
            .header("host", "a")
            .header("host", "b")
            .body(())
            .unwrap();
        assert_eq!(code(two), Some((400, "bad_host")));
        let bad = get().header("host", "a b").body(()).unwrap();
        assert_eq!(code(bad), Some((400, "bad_host")));
        let old = get().version(Version::HTTP_10).body(()).unwrap();
        assert_eq!(code(old), None);
        for (host, expected) in [
            ("a:8080", None),
            ("[::1]:80", None),
            ("a:", None),
            ("a:99999", Some((400, "bad_host"))),
            ("a:+80", Some((400, "bad_host"))),
            ("[::1]x", Some((400, "bad_host"))),
            ("[::1]5", Some((400, "bad_host"))),
            ("u@a", Some((400, "bad_host"))),
        ] {
            let request = get().header("host", host).body(()).unwrap();
            assert_eq!(code(request), expected, "{host}");
        }
    }

    #[test]
    fn an_absolute_target_names_a_host_by_the_same_rules() {
        let absolute = |target: &str| get().uri(target).header("host", "good").body(()).unwrap();
        assert_eq!(code(absolute("http://a:8080/x")), None);
        for target in ["http://user:pw@evil/x", "http://evil:99999/x"] {
            assert_eq!(code(absolute(target)), Some((400, "bad_host")), "{target}");
        }
    }

    #[test]
    fn connect_and_oversized_heads_are_refused() {
        let connect = get()
            .method("CONNECT")
            .header("host", "a")
            .body(())
            .unwrap();
        assert_eq!(code(connect), Some((405, "method_not_allowed")));
        let long_uri = get()
            .uri(format!("/{}", "x".repeat(100)))
            .header("host", "a");
        assert_eq!(
            code(long_uri.body(()).unwrap()),
            Some((414, "uri_too_long"))
        );
        let long_line = get().header("host", "a").header("x", "v".repeat(100));
        assert_eq!(
            code(long_line.body(()).unwrap()),
            Some((431, "header_too_large"))
        );
        let mut many = get().header("host", "a");
        for i in 0..5 {
            many = many.header(format!("x-{i}"), "v".repeat(40));
        }
        assert_eq!(
            code(many.body(()).unwrap()),
            Some((431, "header_too_large"))
        );
    }
}
