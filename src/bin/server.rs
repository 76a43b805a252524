//! `server [run|daemon|stop|status] [--config FILE]`
//!
//! - `run` (the default): foreground, logs to stderr.
//! - `daemon`: detaches (fork + setsid), logs to `data_dir/server.log`, and returns once the
//!   listener is up, saying where.
//! - `stop`: SIGTERM to the running server, then waits for it to exit.
//! - `upgrade`: starts this binary in the background in place of the running server, without
//!   downtime: it takes over the listening sockets, and the old server drains (1012).
//! - `status`: running or not, pid, address.

use std::io::{Read, Write};
use std::os::unix::io::FromRawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use wxchat::config::{self, Config};
use wxchat::pidfile::{self, Status};
use wxchat::server::Server;

/// jemalloc: the chat path allocates a few small objects per message on the reactor and the
/// persister threads, and glibc's allocator spent a fifth of the reactor's time on them.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, which it reads when it starts (`_RJEM_MALLOC_CONF` in the environment
/// still overrides them): unused pages go back to the kernel after a second (10 s by default),
/// by jemalloc's background thread, which `return_freed_memory` starts.
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: &[u8; 20] = b"dirty_decay_ms:1000\0";

/// Starts jemalloc's background thread, which returns freed pages to the kernel even while the
/// server is quiet: without it jemalloc purges only from inside later allocations, so a server
/// idle after a burst kept the burst's pages resident for as long as it stayed idle
/// (BENCHMARKS.md, "Memory after load"). Started here, after `daemon`'s fork, not by
/// `malloc_conf`: a fork leaves the child without jemalloc's thread, and disabled.
fn return_freed_memory() {
    let on = true;
    // SAFETY: "background_thread" is a bool control; jemalloc reads `size_of::<bool>()` bytes
    // from a live local and writes nothing back (null old-value pointers).
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            c"background_thread".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            (&on as *const bool).cast_mut().cast(),
            std::mem::size_of::<bool>(),
        )
    };
    if rc != 0 {
        log::warn!("jemalloc background thread not started (error {rc}): freed memory returns to the kernel only as the server allocates");
    }
}

/// SQLite's allocations on jemalloc too (see `wxchat::store::sqlite::use_jemalloc`): before any
/// store opens, so SQLite has not started yet. Refused, SQLite stays on its default allocator
/// and the server runs as before.
fn sqlite_on_jemalloc() {
    if let Err(rc) = wxchat::store::sqlite::use_jemalloc() {
        log::warn!("SQLite keeps its own allocator (sqlite3_config refused: {rc})");
    }
}

const USAGE: &str = "\
usage: server [run|daemon|stop|status|upgrade] [--config FILE]

  run      run in the foreground, logging to stderr (the default)
  daemon   run in the background, logging to <data_dir>/server.log
  stop     stop the running server gracefully and wait for it to exit
  status   say whether a server runs on this data directory, its pid, address and live
           figures (from the admin listener)
  upgrade  replace the running server with this binary without downtime: the new one (in the
           background, like daemon) takes over the listening sockets; the old one stops
           accepting, closes its WebSockets with 1012 over [server] drain_s, and exits

  --config FILE   read FILE (TOML; see server.toml). Without it, ./server.toml is read when
                  present, else the defaults. WXCHAT_<SECTION>_<KEY> variables override both.
";

/// Exit status of `status` when no server runs (LSB convention).
const EXIT_NOT_RUNNING: u8 = 3;

struct Args {
    command: String,
    config: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut command = None;
    let mut config = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" | "help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            "-V" | "--version" => {
                println!("wxchat server {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            "-c" | "--config" => {
                let path = args.next().ok_or("--config needs a file")?;
                config = Some(PathBuf::from(path));
            }
            s if s.starts_with("--config=") => {
                config = Some(PathBuf::from(&s["--config=".len()..]));
            }
            "run" | "daemon" | "stop" | "status" | "upgrade" if command.is_none() => {
                command = Some(arg);
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    Ok(Args {
        command: command.unwrap_or_else(|| "run".into()),
        config,
    })
}

fn load_config(path: Option<PathBuf>) -> Result<Config, String> {
    let path = path.or_else(|| {
        let default = PathBuf::from("server.toml");
        default.exists().then_some(default)
    });
    let mut config = Config::load(path.as_deref()).map_err(|e| format!("bad config: {e}"))?;
    // The daemon outlives the shell's cwd assumptions: make data_dir absolute up front.
    if config.server.data_dir.is_relative() {
        if let Ok(cwd) = std::env::current_dir() {
            let rel = config.server.data_dir.clone();
            config.server.data_dir = cwd.join(rel.strip_prefix(".").unwrap_or(&rel));
        }
    }
    Ok(config)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("server: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let config = match load_config(args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("server: {e}");
            return ExitCode::from(1);
        }
    };
    if matches!(args.command.as_str(), "status" | "stop") {
        // These only print: `server status | head` should end quietly when the reader goes,
        // not panic on EPIPE (Rust ignores SIGPIPE; the server itself must keep ignoring it).
        // SAFETY: resetting a signal disposition before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match args.command.as_str() {
        "run" => run_foreground(config),
        "daemon" => daemon(config, false),
        "upgrade" => daemon(config, true),
        "stop" => stop(&config),
        "status" => return status(&config),
        _ => Err("unknown command".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("server: {e}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(config: &Config, file: Option<PathBuf>) -> Result<(), String> {
    let level = config::log_level(&config.server.log_level).unwrap_or(log::LevelFilter::Info);
    wxchat::logger::init(level, file).map_err(|e| format!("cannot open the log: {e}"))
}

fn run_foreground(config: Config) -> Result<(), String> {
    init_logging(&config, None)?;
    return_freed_memory();
    sqlite_on_jemalloc();
    let server = Server::bind_exclusive(config)?;
    server.run()
}

/// Forks; the parent waits on a pipe for the child to report "ok <addr>" or an error. With
/// `takeover` (`server upgrade`) the child takes over from the running server instead of
/// refusing to start beside it.
fn daemon(config: Config, takeover: bool) -> Result<(), String> {
    std::fs::create_dir_all(&config.server.data_dir).map_err(|e| {
        format!(
            "cannot create data_dir {}: {e}",
            config.server.data_dir.display()
        )
    })?;
    let running = pidfile::probe(&config.pid_file());
    let old_pid = match running {
        Ok(Status::Running { pid, addr, .. }) if !takeover => {
            return Err(format!(
            "a server is already running on this data directory (pid {pid}, listening on {addr})"
        ))
        }
        Ok(Status::Running { pid, .. }) => Some(pid),
        _ if takeover => {
            return Err(
                "no server is running on this data directory: start one with `server daemon`"
                    .into(),
            )
        }
        _ => None,
    };
    let mut fds = [0i32; 2];
    // SAFETY: pipe fills the two-element array we pass.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    let (read_fd, write_fd) = (fds[0], fds[1]);
    // SAFETY: no threads exist yet (nothing has been started), so fork is safe.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid > 0 {
        // Parent: wait for the child's verdict.
        // SAFETY: we own both descriptors; each is closed or wrapped exactly once.
        unsafe { libc::close(write_fd) };
        let mut pipe = unsafe { std::fs::File::from_raw_fd(read_fd) };
        let mut report = String::new();
        let _ = pipe.read_to_string(&mut report);
        return match report.strip_prefix("ok ") {
            Some(addr) => {
                println!(
                    "wxchat server running in the background: pid {pid}, listening on {}, log {}",
                    addr.trim(),
                    config.log_file().display()
                );
                if let Some(old) = old_pid {
                    println!(
                        "upgraded: the previous server (pid {old}) stopped accepting and closes its WebSockets (1012) over {} s",
                        config.server.drain_s
                    );
                }
                Ok(())
            }
            None if report.is_empty() => Err(format!(
                "the server exited during start-up; see {}",
                config.log_file().display()
            )),
            None => Err(report.trim().to_string()),
        };
    }
    // Child.
    // SAFETY: plain syscalls on descriptors we own; the pipe's read end is not ours.
    unsafe {
        libc::close(read_fd);
        libc::setsid();
    }
    let mut report = unsafe { std::fs::File::from_raw_fd(write_fd) };
    let outcome = daemon_child(&config, &mut report, takeover);
    if let Err(e) = &outcome {
        let _ = report.write_all(e.as_bytes());
        log::error!("{e}");
    }
    outcome
}

fn daemon_child(config: &Config, report: &mut std::fs::File, takeover: bool) -> Result<(), String> {
    redirect_stdio()?;
    init_logging(config, Some(config.log_file()))?;
    return_freed_memory();
    sqlite_on_jemalloc();
    let server = if takeover {
        Server::takeover(config.clone())?
    } else {
        Server::bind_exclusive(config.clone())?
    };
    let addr = server.local_addr();
    report
        .write_all(format!("ok {addr}").as_bytes())
        .map_err(|e| format!("reporting to the parent failed: {e}"))?;
    // Close our end so the parent's read returns.
    // SAFETY: stdio now points at /dev/null; replacing `report` with a dup of it closes the pipe.
    let devnull = std::fs::File::open("/dev/null").map_err(|e| e.to_string())?;
    *report = devnull;
    server.run()
}

fn redirect_stdio() -> Result<(), String> {
    let devnull = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("cannot open /dev/null: {e}"))?;
    use std::os::unix::io::AsRawFd;
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors.
        if unsafe { libc::dup2(devnull.as_raw_fd(), fd) } < 0 {
            return Err(format!("dup2: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

fn stop(config: &Config) -> Result<(), String> {
    let path = config.pid_file();
    let pid =
        match pidfile::probe(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))? {
            Status::Running { pid, .. } if pid > 0 => pid,
            Status::Running { .. } => return Err("the server is still starting; try again".into()),
            Status::NotRunning => return Err("no server is running on this data directory".into()),
            Status::Stale { pid } => {
                return Err(format!(
                    "no server is running (stale pid file {} from pid {})",
                    path.display(),
                    pid.map_or_else(|| "?".into(), |p| p.to_string())
                ))
            }
        };
    // SAFETY: sending SIGTERM to the pid recorded by a server that still holds the lock.
    if unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) } != 0 {
        return Err(format!(
            "cannot signal pid {pid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let running = matches!(pidfile::probe(&path), Ok(Status::Running { .. }));
        if !running && !pidfile::process_alive(pid) {
            println!("wxchat server stopped (pid {pid})");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("pid {pid} did not exit within 30 s"))
}

fn status(config: &Config) -> ExitCode {
    let path = config.pid_file();
    match pidfile::probe(&path) {
        Ok(Status::Running { pid, addr, admin }) => {
            println!("wxchat server is running: pid {pid}, listening on {addr}");
            match admin {
                Some(admin) => live_figures(config, &admin),
                None => println!("  no admin listener ([admin] listen is empty): no live figures"),
            }
            ExitCode::SUCCESS
        }
        Ok(Status::NotRunning) => {
            println!("wxchat server is not running");
            ExitCode::from(EXIT_NOT_RUNNING)
        }
        Ok(Status::Stale { pid }) => {
            println!(
                "wxchat server is not running (stale pid file {} from pid {})",
                path.display(),
                pid.map_or_else(|| "?".into(), |p| p.to_string())
            );
            ExitCode::from(EXIT_NOT_RUNNING)
        }
        Err(e) => {
            eprintln!("server: cannot read {}: {e}", path.display());
            ExitCode::from(1)
        }
    }
}

/// Prints what the running server's admin listener reports (`GET /status`).
fn live_figures(config: &Config, admin: &str) {
    use wxchat::admin::client;
    let token = Some(config.admin.token.as_str()).filter(|t| !t.is_empty());
    let fetched = client::resolve(admin)
        .and_then(|addr| client::get(addr, "/status", token, Duration::from_secs(3)));
    let body = match fetched {
        Ok((200, body)) => body,
        Ok((status, body)) => {
            println!(
                "  live figures unavailable: admin listener {admin} answered {status}: {}",
                body.trim()
            );
            return;
        }
        Err(e) => {
            println!("  live figures unavailable: admin listener {admin}: {e}");
            return;
        }
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
        println!("  live figures unavailable: admin listener {admin} sent no JSON");
        return;
    };
    let n = |k: &str| v.get(k).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
    println!("  admin:        {admin}");
    println!(
        "  version:      {} (node {}), up {}",
        v.get("version").and_then(|x| x.as_str()).unwrap_or("?"),
        v.get("node").and_then(|x| x.as_str()).unwrap_or("?"),
        wxchat::admin::format::duration(n("uptime_s") as u64)
    );
    println!(
        "  connections:  {} open, {} WebSockets, {} users online, {} subscribers",
        n("connections"),
        n("websockets"),
        n("users_online"),
        n("subscribers")
    );
    let cluster = |k: &str| v["cluster"][k].as_f64().unwrap_or(0.0);
    if cluster("nodes") > 1.0 {
        println!(
            "  cluster:      {} nodes, {} users online, {} connections, desk on {}",
            cluster("nodes"),
            cluster("users_online"),
            cluster("connections"),
            v["cluster"]["desk_node"]
                .as_str()
                .unwrap_or("(not known yet)")
        );
    }
    println!(
        "  messages:     {:.1}/s in, {:.1}/s delivered, {} since start",
        n("msgs_in_per_s"),
        n("msgs_out_per_s"),
        n("messages_total")
    );
    println!(
        "  queues:       persister {} (lag {:.1} ms), workers {}, jobs in flight {}",
        n("persister_queue"),
        n("persister_lag_ms"),
        n("worker_queue"),
        n("jobs_in_flight")
    );
    println!(
        "  service:      {} waiting, {} consultations running",
        n("service_queue"),
        n("consultations")
    );
    println!(
        "  memory:       {:.1} MiB resident",
        n("rss_bytes") / 1048576.0
    );
    let rt = |k: &str| v["realtime_priority"][k].as_u64().unwrap_or(0);
    // The running server's own setting; a server from before it reported one (met during a
    // live upgrade) is taken to run with this command's configuration.
    let configured = v["realtime_priority"]["configured"]
        .as_u64()
        .unwrap_or(u64::from(config.server.realtime_priority));
    if configured > 0 || rt("reactor") > 0 || rt("persister") > 0 {
        let shown = |p: u64| {
            if p > 0 {
                format!("SCHED_FIFO {p}")
            } else {
                "normal".to_string()
            }
        };
        println!(
            "  scheduling:   reactor {}, persister {} ([server] realtime_priority = {configured})",
            shown(rt("reactor")),
            shown(rt("persister"))
        );
    }
}
