//! A `redis-server` of a test's own, on a free port, that the test may stop, kill and start
//! again on the same port (the machine's Redis is never touched).
//!
//! The port is found by binding port 0 and letting it go, so another test may take it before
//! redis-server does: redis-server then exits at start. A first start that exits is tried again
//! on a new port, and ready means the server answered `PING`, so a listener of another test on
//! the port is never taken for it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct PrivateRedis {
    pub port: u16,
    /// The append-only file's directory when persistent: what was written before a stop is
    /// there after the next start.
    dir: Option<tempfile::TempDir>,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Without persistence: a restart starts empty.
    pub fn start() -> PrivateRedis {
        Self::start_with(None)
    }

    /// With an append-only file: a restart keeps what was written.
    pub fn start_persistent() -> PrivateRedis {
        Self::start_with(Some(tempfile::tempdir().expect("tempdir")))
    }

    fn start_with(dir: Option<tempfile::TempDir>) -> PrivateRedis {
        let mut r = PrivateRedis {
            port: 0,
            dir,
            child: None,
        };
        for _ in 0..5 {
            r.port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            if r.try_resume() {
                return r;
            }
        }
        panic!("redis-server exited at start five times (ports taken?)");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A connection that has answered `PING`, or None.
    pub fn conn(&self) -> Option<redis::Connection> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut c = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        redis::cmd("PING").query::<String>(&mut c).ok()?;
        Some(c)
    }

    /// Starts it again on the same port (after `stop` or `kill`).
    pub fn resume(&mut self) {
        assert!(
            self.try_resume(),
            "redis-server exited at start: port {} taken meanwhile?",
            self.port
        );
    }

    /// Starts redis-server and waits for its `PING`; false if it exited first.
    fn try_resume(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""]);
        match &self.dir {
            Some(dir) => cmd.args(["--appendonly", "yes", "--dir"]).arg(dir.path()),
            None => cmd.args(["--appendonly", "no"]),
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("this test needs redis-server on PATH (Debian package redis-server): {e}")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return false;
            }
            if self.conn().is_some() {
                return true;
            }
            assert!(Instant::now() < deadline, "redis-server did not answer");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it the way an operator would: SIGTERM, then wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: a signal to the child process this test started.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    /// Kills it as a crash would (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
