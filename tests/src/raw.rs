//! Hand-made binary-protocol frames over raw sockets, for tests that must
//! send or receive bytes the real client or server never would.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sessiond_proto::codec::{LENGTH_PREFIX_BYTES, decode, encode};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest frame [`read_message`] accepts.
pub const MAX_READ_FRAME: usize = 4 << 20;

/// One message with its 4-byte big-endian length prefix.
pub fn frame<T: Serialize>(message: &T) -> Vec<u8> {
    let payload = encode(message).expect("the message must encode");
    let length = u32::try_from(payload.len()).expect("a frame under 4 GiB");
    let mut framed = length.to_be_bytes().to_vec();
    framed.extend_from_slice(&payload);
    framed
}

/// Reads one frame and decodes it as `T`: `None` when the peer closed (EOF
/// or reset) before a new frame began. Panics on a frame that does not
/// decode, on a close mid-frame, and after `timeout` without either.
pub async fn read_message<T, R>(reader: &mut R, timeout: Duration) -> Option<T>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    let read = async {
        let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
        if let Err(err) = reader.read_exact(&mut prefix).await {
            return match err.kind() {
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => None,
                _ => panic!("reading a frame failed: {err}"),
            };
        }
        let length = u32::from_be_bytes(prefix) as usize;
        assert!(
            length <= MAX_READ_FRAME,
            "the peer announced {length} bytes"
        );
        let mut payload = vec![0u8; length];
        reader
            .read_exact(&mut payload)
            .await
            .expect("the peer sent a truncated frame");
        Some(decode::<T>(&payload).expect("the peer's frame must decode"))
    };
    tokio::time::timeout(timeout, read)
        .await
        .expect("the peer neither sent a frame nor closed in time")
}
