//! The one place Beacon handles raw file descriptors: moving an accepted socket from the
//! accepting shard to the room's owner shard, and writing to a connection's socket straight
//! from a fan-out. Crosses shards (Send): an [`OwnedSocket`] is an owned fd with no executor
//! attached.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use glommio::net::TcpStream;

/// A socket detached from any executor, ready to travel to another shard.
#[derive(Debug)]
pub struct OwnedSocket(OwnedFd);

/// Detaches `stream` from this shard. The stream is dropped here; the duplicate keeps the
/// connection open (closing one of two descriptors of a socket does not close the socket).
pub fn detach(stream: TcpStream) -> std::io::Result<OwnedSocket> {
    // SAFETY: `stream` is alive for the duration of the borrow, so its fd is valid.
    let borrowed = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    let dup = borrowed.try_clone_to_owned()?;
    drop(stream);
    Ok(OwnedSocket(dup))
}

/// Attaches a detached socket to the current shard's reactor.
pub fn attach(sock: OwnedSocket) -> TcpStream {
    let fd = sock.0.into_raw_fd();
    // SAFETY: `fd` came from `into_raw_fd` of an OwnedFd we exclusively own, so it is a valid,
    // open socket descriptor and ownership passes to the TcpStream exactly once.
    unsafe { TcpStream::from_raw_fd(fd) }
}

/// A connection socket's descriptor as its shard may write to it outside the connection's
/// task. Owned by the connection's shard. The connection task creates it from its stream and
/// calls [`DirectFd::revoke`] before that stream can be dropped (`ConnTask`'s `Drop`), so a
/// descriptor number that the kernel reuses for another socket is never written through.
#[derive(Debug)]
pub struct DirectFd(std::cell::Cell<RawFd>);

impl DirectFd {
    pub const fn none() -> Self {
        DirectFd(std::cell::Cell::new(-1))
    }

    pub fn set(&self, stream: &TcpStream) {
        self.0.set(stream.as_raw_fd());
    }

    pub fn revoke(&self) {
        self.0.set(-1);
    }

    /// One non-blocking `send`. `None` when there is no descriptor or the kernel buffer is
    /// full (the caller queues instead); `Some(Err)` when the socket failed.
    pub fn try_send(&self, buf: &[u8]) -> Option<std::io::Result<usize>> {
        let fd = self.0.get();
        if fd < 0 {
            return None;
        }
        // SAFETY: `fd` is the descriptor of a stream that is still open: it is set from a live
        // stream and revoked before that stream is dropped (see the type's doc). `buf` is a
        // valid slice for `buf.len()` bytes. MSG_DONTWAIT keeps the shard from blocking and
        // MSG_NOSIGNAL turns a closed peer into EPIPE instead of SIGPIPE.
        let n = unsafe {
            libc::send(
                fd,
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            return Some(Ok(n as usize));
        }
        let err = std::io::Error::last_os_error();
        match err.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => None,
            _ => Some(Err(err)),
        }
    }
}
