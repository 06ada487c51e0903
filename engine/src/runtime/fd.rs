//! The one place Beacon handles raw file descriptors: moving an accepted socket from the
//! accepting shard to the room's owner shard, a connection's reads and writes on its owner
//! shard, the shard's epoll set that says when a connection's socket is ready, and writing
//! to a connection's socket straight from a fan-out. Crosses shards (Send): an
//! [`OwnedSocket`] is an owned fd with no executor attached.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use glommio::net::TcpStream;

/// A socket detached from any executor: on its way to another shard, or a connection's
/// socket on its owner shard, where the shard's [`Poller`] says when it is ready.
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
/// task. Owned by the connection's shard. The connection task creates it from its socket and
/// calls [`DirectFd::revoke`] before that socket can be closed (`ConnTask`'s `Drop`), so a
/// descriptor number that the kernel reuses for another socket is never written through.
#[derive(Debug)]
pub struct DirectFd(std::cell::Cell<RawFd>);

impl DirectFd {
    pub const fn none() -> Self {
        DirectFd(std::cell::Cell::new(-1))
    }

    pub fn set(&self, sock: &OwnedSocket) {
        self.0.set(sock.raw());
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
        // `fd` is the descriptor of a stream that is still open: it is set from a live socket
        // and revoked before that socket is closed (see the type's doc).
        send_nonblocking(fd, buf)
    }
}

impl OwnedSocket {
    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// One non-blocking `recv`. `None` when nothing is waiting.
    pub fn recv(&self, buf: &mut [u8]) -> Option<std::io::Result<usize>> {
        // SAFETY: the descriptor is owned by `self` and open; `buf` is valid for writes of
        // `buf.len()` bytes. MSG_DONTWAIT keeps the shard from blocking.
        let n = unsafe {
            libc::recv(
                self.raw(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        nonblocking_result(n)
    }

    /// One non-blocking `send`. `None` when the kernel buffer is full.
    pub fn send(&self, buf: &[u8]) -> Option<std::io::Result<usize>> {
        send_nonblocking(self.raw(), buf)
    }

    /// Half-close: the peer reads EOF after what was sent, and can still send its close frame.
    pub fn shutdown_write(&self) {
        // SAFETY: the descriptor is owned by `self` and open. A failure (the peer is gone)
        // leaves nothing to undo: the next read reports it.
        unsafe {
            libc::shutdown(self.raw(), libc::SHUT_WR);
        }
    }
}

fn send_nonblocking(fd: RawFd, buf: &[u8]) -> Option<std::io::Result<usize>> {
    // SAFETY: callers pass the descriptor of an open socket (see `OwnedSocket` and
    // `DirectFd`); `buf` is a valid slice for `buf.len()` bytes. MSG_DONTWAIT keeps the shard
    // from blocking and MSG_NOSIGNAL turns a closed peer into EPIPE instead of SIGPIPE.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    nonblocking_result(n)
}

fn nonblocking_result(n: isize) -> Option<std::io::Result<usize>> {
    if n >= 0 {
        return Some(Ok(n as usize));
    }
    let err = std::io::Error::last_os_error();
    match err.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => None,
        _ => Some(Err(err)),
    }
}

/// What [`Poller::wait`] reports of a socket.
pub const READABLE: u8 = 1;
pub const WRITABLE: u8 = 2;

/// A shard's epoll set of its connection sockets, edge-triggered: a socket is reported when
/// it becomes readable or writable again, and stays registered for its whole life. The set's
/// own descriptor is watched through glommio's ring, one poll for a whole batch of ready
/// sockets, where a poll per socket read would cost a ring submission, a completion and a
/// task-work run per message. Owned by its shard.
#[derive(Debug)]
pub struct Poller(OwnedFd);

impl Poller {
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: plain syscall; a non-negative result is a new descriptor we own.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        Ok(Poller(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Watches `sock` for input, output, hang-up and errors; `key` comes back with each event.
    pub fn add(&self, sock: &OwnedSocket, key: u64) -> std::io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: key,
        };
        // SAFETY: both descriptors are open (owned by `self` and `sock`); `ev` is valid.
        let r = unsafe { libc::epoll_ctl(self.raw(), libc::EPOLL_CTL_ADD, sock.raw(), &mut ev) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stops watching `sock`; called before it closes, so no event names a closed socket.
    pub fn remove(&self, sock: &OwnedSocket) {
        // SAFETY: both descriptors are open. A socket that was never added gives ENOENT,
        // which leaves nothing to undo.
        unsafe {
            libc::epoll_ctl(
                self.raw(),
                libc::EPOLL_CTL_DEL,
                sock.raw(),
                std::ptr::null_mut(),
            );
        }
    }

    /// The ready sockets, without waiting: `(key, READABLE | WRITABLE)` into `out`. Returns
    /// how many.
    pub fn ready(&self, events: &mut [libc::epoll_event], out: &mut Vec<(u64, u8)>) -> usize {
        let cap = events.len().min(i32::MAX as usize) as i32;
        // SAFETY: `events` is valid for writes of `cap` entries; timeout 0 never blocks.
        let n = unsafe { libc::epoll_wait(self.raw(), events.as_mut_ptr(), cap, 0) };
        if n <= 0 {
            return 0;
        }
        let n = n as usize;
        let (hup, input, output) = (
            (libc::EPOLLHUP | libc::EPOLLERR) as u32,
            (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            libc::EPOLLOUT as u32,
        );
        for ev in &events[..n] {
            let bits = ev.events;
            let mut flags = 0;
            if bits & (input | hup) != 0 {
                flags |= READABLE;
            }
            if bits & (output | hup) != 0 {
                flags |= WRITABLE;
            }
            out.push((ev.u64, flags));
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pair() -> (OwnedSocket, std::os::unix::net::UnixStream) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (OwnedSocket(OwnedFd::from(a)), b)
    }

    fn events(p: &Poller) -> Vec<(u64, u8)> {
        let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; 8];
        let mut out = Vec::new();
        p.ready(&mut evs, &mut out);
        out
    }

    #[test]
    fn the_poller_reports_each_edge_once() {
        let p = Poller::new().unwrap();
        let (sock, mut peer) = pair();
        p.add(&sock, 7).unwrap();
        // Writable from the start; nothing to read yet.
        assert_eq!(events(&p), vec![(7, WRITABLE)]);
        assert!(events(&p).is_empty(), "edge-triggered: no repeat");
        peer.write_all(b"hello").unwrap();
        let ev = events(&p);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].0, 7);
        assert_ne!(ev[0].1 & READABLE, 0);
        let mut buf = [0u8; 64];
        assert_eq!(sock.recv(&mut buf).unwrap().unwrap(), 5);
        assert!(sock.recv(&mut buf).is_none(), "drained");
        assert!(events(&p).is_empty());
        // New data after the drain is a new edge.
        peer.write_all(b"again").unwrap();
        assert_ne!(events(&p)[0].1 & READABLE, 0);
        // The peer going away is reported as readable (recv then says 0).
        assert_eq!(sock.recv(&mut buf).unwrap().unwrap(), 5);
        drop(peer);
        assert_ne!(events(&p)[0].1 & READABLE, 0);
        assert_eq!(sock.recv(&mut buf).unwrap().unwrap(), 0);
        p.remove(&sock);
        assert!(events(&p).is_empty());
    }

    #[test]
    fn a_full_socket_is_reported_writable_once_the_peer_reads() {
        let p = Poller::new().unwrap();
        let (sock, mut peer) = pair();
        p.add(&sock, 1).unwrap();
        events(&p);
        let chunk = [0u8; 4096];
        let mut sent = 0;
        while let Some(r) = sock.send(&chunk) {
            sent += r.unwrap();
        }
        assert!(sent > 0);
        assert!(events(&p).is_empty(), "full: nothing to report");
        let mut buf = vec![0u8; sent];
        std::io::Read::read_exact(&mut peer, &mut buf).unwrap();
        assert_ne!(events(&p)[0].1 & WRITABLE, 0);
    }
}
