//! Zero-downtime upgrade: the listening sockets pass from the running server to its successor
//! over a Unix socket in the data directory (`handover.sock`, mode 0600), as file descriptors
//! (SCM_RIGHTS). Both processes then hold the same kernel sockets: connections waiting in the
//! accept queue are never lost (with SO_REUSEPORT a closing listener resets its queue), and no
//! port is ever free for another program to take. The old server then stops accepting and
//! drains (protocol-spec 1.5, close code 1012).

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Most descriptors handed over (the client and the admin listener).
const MAX_FDS: usize = 4;

/// The request a successor sends.
const REQUEST: &[u8] = b"takeover\n";

/// Where a running server waits for its successor.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("handover.sock")
}

/// Waits (on a thread of its own) for one successor: sends it `fds` and this process's pid,
/// then calls `handed_over` (which starts the drain). Just before sending, `sole_writer(false)`
/// tells the store another process is about to write beside this one (it leaves its commit
/// log); if that fails nothing is sent, and if the send fails `sole_writer(true)` takes the
/// store back. The socket file is replaced if one was left behind; only the holder of the data
/// directory's pid lock calls this.
pub fn serve(
    data_dir: &Path,
    fds: Vec<RawFd>,
    sole_writer: impl Fn(bool) -> io::Result<()> + Send + 'static,
    handed_over: impl FnOnce() + Send + 'static,
) -> io::Result<()> {
    let path = socket_path(data_dir);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    std::thread::Builder::new()
        .name("handover".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                match answer(&mut stream, &fds, &sole_writer) {
                    Ok(()) => {
                        log::info!("upgrade: listeners handed to the successor; draining");
                        handed_over();
                        return;
                    }
                    Err(e) => log::warn!("upgrade: a handover request failed: {e}"),
                }
            }
        })?;
    Ok(())
}

fn answer(
    stream: &mut UnixStream,
    fds: &[RawFd],
    sole_writer: &dyn Fn(bool) -> io::Result<()>,
) -> io::Result<()> {
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut req = [0u8; REQUEST.len()];
    stream.read_exact(&mut req)?;
    if req != REQUEST {
        return Err(io::Error::other("not a handover request"));
    }
    sole_writer(false)?;
    let pid = std::process::id().to_string();
    let sent = send_fds(stream, pid.as_bytes(), fds);
    if sent.is_err() {
        if let Err(e) = sole_writer(true) {
            log::warn!("upgrade: the store stays in its shared-writer mode: {e}");
        }
    }
    sent
}

/// The successor's side: asks the running server for its listeners. Returns its pid and the
/// descriptors, in the order it listed them (the client listener first).
pub fn take(data_dir: &Path) -> io::Result<(u32, Vec<OwnedFd>)> {
    let path = socket_path(data_dir);
    let mut stream = UnixStream::connect(&path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("no running server answers at {} ({e})", path.display()),
        )
    })?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    stream.write_all(REQUEST)?;
    let (payload, fds) = recv_fds(&stream)?;
    let pid = std::str::from_utf8(&payload)
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| io::Error::other("the running server answered without its pid"))?;
    if fds.is_empty() {
        return Err(io::Error::other("the running server sent no listeners"));
    }
    Ok((pid, fds))
}

fn send_fds(stream: &UnixStream, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let fds = &fds[..fds.len().min(MAX_FDS)];
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: msghdr is plain data; the pointers set below outlive the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    // SAFETY: the control buffer is CMSG_SPACE(fd_bytes) long, so the first header and its
    // data fit; the descriptors are copied into it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr() as *const u8, libc::CMSG_DATA(cmsg), fd_bytes);
    }
    // SAFETY: a valid socket and a fully initialised msghdr.
    let n = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn recv_fds(stream: &UnixStream) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut payload = vec![0u8; 64];
    let fd_bytes = MAX_FDS * std::mem::size_of::<RawFd>();
    // SAFETY: a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: plain data, pointers valid for the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    // SAFETY: a valid socket and msghdr; MSG_CMSG_CLOEXEC keeps the descriptors from leaking
    // into children.
    let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    payload.truncate(n as usize);
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel wrote, within msg_controllen; each
    // SCM_RIGHTS descriptor is now ours, owned exactly once.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let len = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                let count = len / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    let fd = std::ptr::read_unaligned((data as *const RawFd).add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((payload, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_pass_to_the_successor_and_keep_accepting() {
        let dir = tempfile::tempdir().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (writes, writes_told) = std::sync::mpsc::channel();
        let sole_writer = move |sole: bool| {
            writes.send(sole).unwrap();
            Ok(())
        };
        serve(
            dir.path(),
            vec![listener.as_raw_fd()],
            sole_writer,
            move || {
                tx.send(()).unwrap();
            },
        )
        .unwrap();
        let (pid, fds) = take(dir.path()).unwrap();
        assert_eq!(pid, std::process::id());
        // The store was told before the listeners went, and not taken back after.
        assert_eq!(writes_told.try_recv(), Ok(false));
        rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        assert!(writes_told.try_recv().is_err());
        // The old one closes its descriptor; the socket lives on in the successor's.
        drop(listener);
        let taken = std::net::TcpListener::from(fds.into_iter().next().unwrap());
        assert_eq!(taken.local_addr().unwrap(), addr);
        let _client = std::net::TcpStream::connect(addr).unwrap();
        taken.accept().unwrap();
        // Nobody else may ask: the socket file is private.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(socket_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
