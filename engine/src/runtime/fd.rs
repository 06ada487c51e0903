//! The one place Beacon handles raw file descriptors: moving an accepted socket from the
//! accepting shard to the room's owner shard. Crosses shards (Send): an [`OwnedSocket`] is an
//! owned fd with no executor attached.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};

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
