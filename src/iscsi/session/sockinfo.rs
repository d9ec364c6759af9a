//! What the kernel says about a session's socket: its buffers' sizes, the
//! bytes queued in them (one `int` each, by getsockopt or ioctl), whether
//! it is readable.

use nix::libc;

/// An `int` socket option at SOL_SOCKET (SO_RCVBUF, SO_SNDBUF), if the
/// kernel answers.
pub(super) fn option(fd: i32, name: libc::c_int) -> Option<usize> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` live across the call and describe `v`'s size;
    // `fd` is the session's socket, open as long as the session lives.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(v.max(0) as usize)
}

/// Bytes waiting to be read (FIONREAD) or still in the send queue, unsent
/// or unacknowledged (TIOCOUTQ), if the kernel answers.
pub(super) fn queued(fd: i32, request: libc::Ioctl) -> Option<usize> {
    let mut v: libc::c_int = 0;
    // SAFETY: both requests write one c_int, to `v`, which lives across
    // the call; `fd` is the session's socket.
    let r = unsafe { libc::ioctl(fd, request, &mut v) };
    (r == 0).then_some(v.max(0) as usize)
}

/// Whether the socket becomes readable (bytes to read, closed, or an
/// error) within `ns` nanoseconds (less than a second; 0: now, no wait).
pub(super) fn readable(fd: i32, ns: i64) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let t = libc::timespec {
        tv_sec: 0,
        tv_nsec: ns.clamp(0, 999_999_999),
    };
    // SAFETY: one valid pollfd and a valid timespec, both living across
    // the call; no signal mask. An interrupted wait counts as a timeout.
    let r = unsafe { libc::ppoll(&mut p, 1, &t, std::ptr::null()) };
    r > 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    #[test]
    fn buffers_and_queues_of_a_live_socket() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        assert!(option(a.as_raw_fd(), libc::SO_SNDBUF).unwrap() > 0);
        assert!(option(b.as_raw_fd(), libc::SO_RCVBUF).unwrap() > 0);
        assert_eq!(queued(b.as_raw_fd(), libc::FIONREAD), Some(0));
        assert!(!readable(b.as_raw_fd(), 0), "nothing to read yet");
        a.write_all(&[7; 1000]).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while queued(b.as_raw_fd(), libc::FIONREAD) != Some(1000) {
            assert!(std::time::Instant::now() < deadline, "1000 bytes arrive");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(readable(b.as_raw_fd(), 0));
        // Acknowledged (loopback): nothing left in the sender's queue.
        while queued(a.as_raw_fd(), libc::TIOCOUTQ) != Some(0) {
            assert!(std::time::Instant::now() < deadline, "acknowledged");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(option(-1, libc::SO_SNDBUF), None);
    }
}
