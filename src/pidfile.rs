//! `data_dir/server.pid`: "<pid>\n<listen address>\n<admin address>\n" (the last line empty
//! without an admin listener), held under an exclusive `flock` for the
//! life of the server. The lock, not the file's existence, says whether a server runs: a file left
//! by a crashed server (`kill -9`) is stale and never blocks a restart, and two servers on one
//! data directory cannot both hold it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// What the pid file says about the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Status {
    /// No pid file.
    NotRunning,
    /// A pid file nobody holds: the server that wrote it is gone.
    Stale { pid: Option<u32> },
    /// A live server holds the lock.
    Running {
        pid: u32,
        addr: String,
        /// The admin listener's address, when it has one.
        admin: Option<String>,
    },
}

/// The held lock; dropping it (or exiting) releases it.
pub struct PidLock {
    file: File,
    path: PathBuf,
}

fn try_lock(file: &File) -> std::io::Result<bool> {
    // SAFETY: flock on a valid, owned file descriptor; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

fn parse(text: &str) -> (Option<u32>, String, Option<String>) {
    let mut lines = text.lines();
    let pid = lines.next().and_then(|l| l.trim().parse().ok());
    let addr = lines.next().unwrap_or("").trim().to_string();
    let admin = lines
        .next()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty());
    (pid, addr, admin)
}

/// Reads the status without disturbing a running server.
pub fn probe(path: &Path) -> std::io::Result<Status> {
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Status::NotRunning),
        Err(e) => return Err(e),
    };
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    let (pid, addr, admin) = parse(&text);
    if try_lock(&file)? {
        // We got the lock, so nobody holds it; closing the file releases it again.
        return Ok(Status::Stale { pid });
    }
    match pid {
        Some(pid) => Ok(Status::Running { pid, addr, admin }),
        // Locked but not yet written: a server is starting.
        None => Ok(Status::Running {
            pid: 0,
            addr: String::new(),
            admin: None,
        }),
    }
}

/// Takes the lock, or says who holds it.
pub fn acquire(path: &Path) -> Result<PidLock, String> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| format!("cannot open pid file {}: {e}", path.display()))?;
    match try_lock(&file) {
        Ok(true) => Ok(PidLock {
            file,
            path: path.to_path_buf(),
        }),
        Ok(false) => {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let (pid, addr, _) = parse(&text);
            Err(format!(
                "a server is already running on this data directory (pid {}, listening on {}; pid file {})",
                pid.map_or_else(|| "?".into(), |p| p.to_string()),
                if addr.is_empty() { "?" } else { &addr },
                path.display()
            ))
        }
        Err(e) => Err(format!("cannot lock pid file {}: {e}", path.display())),
    }
}

/// Waits until the lock is free, then takes it: the successor of a zero-downtime upgrade, whose
/// predecessor holds the lock while it drains and removes the file as it exits. The locked file
/// must still be the one at `path` (not one unlinked meanwhile), or the wait starts over.
pub fn acquire_waiting(path: &Path) -> Result<PidLock, String> {
    use std::os::unix::fs::MetadataExt;
    loop {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| format!("cannot open pid file {}: {e}", path.display()))?;
        // SAFETY: flock on a descriptor we own; blocks until the holder releases or exits.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("cannot lock pid file {}: {e}", path.display()));
        }
        let same = match (file.metadata(), std::fs::metadata(path)) {
            (Ok(held), Ok(named)) => held.ino() == named.ino() && held.dev() == named.dev(),
            _ => false,
        };
        if same {
            return Ok(PidLock {
                file,
                path: path.to_path_buf(),
            });
        }
    }
}

impl PidLock {
    /// Records our pid, listen address and admin address.
    pub fn write(&mut self, pid: u32, addr: &str, admin: Option<&str>) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        let admin = admin.unwrap_or("");
        self.file
            .write_all(format!("{pid}\n{addr}\n{admin}\n").as_bytes())?;
        self.file.sync_all()
    }

    /// The pid file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the file (while still holding the lock) at a clean exit.
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether a process with this pid exists and has not exited (a zombie waiting for a reaper that
/// never comes, as under some container inits, counts as exited).
pub fn process_alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    if unsafe { libc::kill(pid as libc::pid_t, 0) } != 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().chars().next()),
            Some(Some('Z' | 'X'))
        ),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_excludes_and_stale_file_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.pid");
        assert_eq!(probe(&path).unwrap(), Status::NotRunning);
        let mut lock = acquire(&path).unwrap();
        lock.write(4242, "127.0.0.1:9", Some("127.0.0.1:10"))
            .unwrap();
        assert_eq!(
            probe(&path).unwrap(),
            Status::Running {
                pid: 4242,
                addr: "127.0.0.1:9".into(),
                admin: Some("127.0.0.1:10".into()),
            }
        );
        let second = acquire(&path).err().unwrap();
        assert!(
            second.contains("4242") && second.contains("127.0.0.1:9"),
            "{second}"
        );
        drop(lock);
        assert_eq!(probe(&path).unwrap(), Status::Stale { pid: Some(4242) });
        let lock = acquire(&path).unwrap();
        lock.remove();
        assert_eq!(probe(&path).unwrap(), Status::NotRunning);
    }
}
