//! Restart without dropping a connection (`--handover-socket PATH`): a
//! running balancer listens on a Unix socket at PATH; a new one started
//! with the same PATH connects to it and receives the listening sockets
//! themselves (SCM_RIGHTS), so both share one accept queue and no
//! connection is refused or reset. Once the new one serves, it says so and
//! the old one stops accepting, finishes what it has in flight and exits.
//!
//! The exchange: new -> `H` (hand over); old -> `F` with the two file
//! descriptors (balancer, admin); new -> `R` (serving). Anything else, or
//! a close before `R`, leaves the old balancer serving as before.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::TcpListener;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio_util::sync::CancellationToken;

/// Bound of each step of the exchange.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The listening sockets handed over: the balancer's and the admin one.
#[derive(Debug)]
pub struct Sockets {
    /// Where clients connect.
    pub listen: TcpListener,
    /// The admin listener.
    pub admin: TcpListener,
}

/// A handover in progress on the new balancer's side: say [`Taken::ready`]
/// once serving.
#[derive(Debug)]
pub struct Taken {
    stream: UnixStream,
}

impl Taken {
    /// Tells the old balancer to stop accepting and drain.
    pub fn ready(mut self) {
        if let Err(err) = self.stream.write_all(b"R") {
            tracing::warn!(%err, "cannot tell the old balancer to drain");
        }
    }
}

/// Asks the balancer listening at `path` for its sockets: `Ok(None)` when
/// none listens there (a first start).
pub fn take(path: &Path) -> std::io::Result<Option<(Sockets, Taken)>> {
    let mut stream = match UnixStream::connect(path) {
        Ok(stream) => stream,
        Err(err)
            if matches!(
                err.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(err) => return Err(err),
    };
    stream.set_read_timeout(Some(STEP_TIMEOUT))?;
    stream.set_write_timeout(Some(STEP_TIMEOUT))?;
    stream.write_all(b"H")?;
    let mut byte = [0u8; 1];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        &stream,
        &mut [IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    if received.bytes != 1 || byte[0] != b'F' || fds.len() != 2 {
        return Err(std::io::Error::other(
            "the running balancer did not hand over its sockets",
        ));
    }
    let admin = TcpListener::from(fds.pop().unwrap_or_else(|| unreachable!()));
    let listen = TcpListener::from(fds.pop().unwrap_or_else(|| unreachable!()));
    Ok(Some((Sockets { listen, admin }, Taken { stream })))
}

/// Listens at `path` (replacing whatever socket file is there) for the
/// next balancer, on a thread of its own; hands `sockets` to it and then
/// cancels `drain`. Once `drain` is cancelled (by a handover or a signal)
/// the sockets are let go: a copy kept through the drain would let the
/// kernel take connections nobody accepts.
pub fn offer(path: PathBuf, sockets: Sockets, drain: CancellationToken) -> std::io::Result<()> {
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let listener = UnixListener::bind(&path)?;
    let held = Arc::new(Mutex::new(Some(sockets)));
    tokio::spawn({
        let (held, drain) = (held.clone(), drain.clone());
        async move {
            drain.cancelled().await;
            // The lock may be held through a handover's exchange.
            let _ = tokio::task::spawn_blocking(move || held.lock().take()).await;
        }
    });
    std::thread::Builder::new()
        .name("handover".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let held = held.lock();
                let Some(sockets) = held.as_ref() else {
                    return;
                };
                let handed = stream.and_then(|stream| hand_over(stream, sockets));
                match handed {
                    Ok(()) => {
                        tracing::info!("a new balancer took over the listening sockets; draining");
                        drain.cancel();
                        return;
                    }
                    Err(err) => tracing::warn!(%err, "handover failed; still serving"),
                }
            }
        })?;
    Ok(())
}

fn hand_over(mut stream: UnixStream, sockets: &Sockets) -> std::io::Result<()> {
    stream.set_read_timeout(Some(STEP_TIMEOUT))?;
    stream.set_write_timeout(Some(STEP_TIMEOUT))?;
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte)?;
    if byte[0] != b'H' {
        return Err(std::io::Error::other("not a handover request"));
    }
    let fds = [sockets.listen.as_fd(), sockets.admin.as_fd()];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    control.push(SendAncillaryMessage::ScmRights(&fds));
    rustix::net::sendmsg(
        &stream,
        &[IoSlice::new(b"F")],
        &mut control,
        SendFlags::empty(),
    )?;
    stream.read_exact(&mut byte)?;
    if byte[0] != b'R' {
        return Err(std::io::Error::other("the new balancer did not start"));
    }
    Ok(())
}
