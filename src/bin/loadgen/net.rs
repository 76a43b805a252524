//! The load generator's client side: many WebSocket connections on one mio `Poll`, spread over
//! several 127.1.x.y source addresses (each gives another 28k ports), frames decoded with our own
//! codec in client mode, every send masked. Output is queued per connection and written once per
//! loop iteration, like the server does, so the generator is not the bottleneck it measures.

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::io::FromRawFd;
use std::time::{Duration, Instant};
use wxchat::ws::deflate::Deflater;
use wxchat::ws::{self, Event, OpCode};

/// Connections per source address before the next one is used.
const PER_SOURCE: usize = 25_000;

/// Connections being set up (TCP connect + upgrade) at once; the rest wait their turn. Tens of
/// thousands of SYNs at once overflow the listener's queues, and the dropped ones wait out
/// TCP's retransmission back-off, which measures the kernel, not the server.
const MAX_STARTING: usize = 2_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Queued,
    Connecting,
    Handshake,
    Open,
    Closed,
}

struct Io {
    /// None while queued.
    stream: Option<TcpStream>,
    target: SocketAddrV4,
    state: State,
    inbuf: Vec<u8>,
    decoder: ws::Decoder,
    writable: bool,
}

/// What a scenario hears about.
pub enum Ev<'a> {
    Open,
    Text(&'a str),
    Binary(&'a [u8]),
    Closed(&'a str),
}

/// Per-connection output, separate from the input side so a handler can send while its input
/// is borrowed.
pub struct Out {
    bufs: Vec<Vec<u8>>,
    dirty: Vec<usize>,
    is_dirty: Vec<bool>,
    mask: u32,
    /// permessage-deflate per connection, once negotiated: every data frame is compressed, as
    /// browsers do (None: plain).
    compress: Vec<Option<Compress>>,
    zipped: Vec<u8>,
}

/// How a connection compresses what it sends.
enum Compress {
    /// The server asked for client_no_context_takeover: each message on its own.
    Stateless,
    /// The connection keeps its context.
    Own(Box<Deflater>),
}

impl Out {
    /// Queues one masked frame for connection `c`.
    pub fn send(&mut self, c: usize, opcode: OpCode, payload: &[u8]) {
        let data = matches!(opcode, OpCode::Text | OpCode::Binary);
        let compressed = match self.compress.get_mut(c) {
            Some(Some(how)) if data && !payload.is_empty() => {
                let mut z = std::mem::take(&mut self.zipped);
                z.clear();
                match how {
                    Compress::Stateless => ws::deflate::compress_stateless(payload, &mut z),
                    Compress::Own(d) => d.compress(payload, &mut z),
                }
                Some(z)
            }
            _ => None,
        };
        let payload = compressed.as_deref().unwrap_or(payload);
        // A cheap changing mask: the server must unmask whatever it is.
        self.mask = self
            .mask
            .wrapping_mul(1_664_525)
            .wrapping_add(1_013_904_223);
        let mask = self.mask.to_be_bytes();
        let buf = &mut self.bufs[c];
        let mut header = [0u8; 10];
        let n = ws::encode_header(opcode, payload.len(), &mut header);
        header[1] |= 0x80;
        if compressed.is_some() {
            header[0] |= 0x40;
        }
        buf.extend_from_slice(&header[..n]);
        buf.extend_from_slice(&mask);
        let start = buf.len();
        buf.extend_from_slice(payload);
        ws::apply_mask(&mut buf[start..], mask, 0);
        if let Some(z) = compressed {
            self.zipped = z;
        }
        if !self.is_dirty[c] {
            self.is_dirty[c] = true;
            self.dirty.push(c);
        }
    }

    pub fn text(&mut self, c: usize, text: &str) {
        self.send(c, OpCode::Text, text.as_bytes());
    }
}

pub struct Net {
    poll: Poll,
    events: Events,
    io: Vec<Io>,
    pub out: Out,
    scratch: Vec<u8>,
    host: String,
    path_of: Vec<String>,
    pub open: usize,
    pub closed: usize,
    queued: VecDeque<usize>,
    starting: usize,
    /// Offer permessage-deflate in every upgrade.
    pub deflate: bool,
    /// Bytes read from and written to the sockets (the wire, after compression).
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// A timerfd on the poll: epoll's own timeout is in whole milliseconds, too coarse to pace
    /// 10,000 messages a second one at a time.
    timer: OwnedFd,
}

/// The poll token of [`Net::timer`]; connections are numbered from 0.
const TIMER: Token = Token(usize::MAX);

/// A non-blocking monotonic timerfd, registered on `poll` as [`TIMER`].
fn timerfd_on(poll: &Poll) -> io::Result<OwnedFd> {
    // SAFETY: timerfd_create returns a new descriptor (or -1), owned from here on.
    let fd = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    poll.registry().register(
        &mut mio::unix::SourceFd(&fd.as_raw_fd()),
        TIMER,
        Interest::READABLE,
    )?;
    Ok(fd)
}

/// A non-blocking connect from `source` (port chosen by the kernel).
fn connect_from(source: Ipv4Addr, target: SocketAddrV4) -> io::Result<TcpStream> {
    // SAFETY: plain socket calls on a descriptor owned here until it is wrapped.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let std = std::net::TcpStream::from_raw_fd(fd);
        let sockaddr = |a: SocketAddrV4| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // The port is chosen at connect time, per destination, so ports still in TIME_WAIT from
        // an earlier run do not exhaust a source address (IP_BIND_ADDRESS_NO_PORT).
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let src = sockaddr(SocketAddrV4::new(source, 0));
        if libc::bind(fd, &src as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(io::Error::last_os_error());
        }
        let dst = sockaddr(target);
        if libc::connect(fd, &dst as *const _ as *const libc::sockaddr, len) != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(e);
            }
        }
        let _ = std.set_nodelay(true);
        Ok(TcpStream::from_std(std))
    }
}

impl Net {
    pub fn new(target: SocketAddr) -> io::Result<Net> {
        let poll = Poll::new()?;
        let timer = timerfd_on(&poll)?;
        Ok(Net {
            poll,
            timer,
            events: Events::with_capacity(4096),
            io: Vec::new(),
            out: Out {
                bufs: Vec::new(),
                dirty: Vec::new(),
                is_dirty: Vec::new(),
                mask: 0x1234_5678,
                compress: Vec::new(),
                zipped: Vec::new(),
            },
            scratch: vec![0; 256 * 1024],
            host: target.to_string(),
            path_of: Vec::new(),
            open: 0,
            closed: 0,
            queued: VecDeque::new(),
            starting: 0,
            deflate: false,
            rx_bytes: 0,
            tx_bytes: 0,
        })
    }

    /// Adds a connection to `target` + `path`; it is started when fewer than [`MAX_STARTING`]
    /// others are being set up, and the upgrade follows by itself.
    pub fn connect(&mut self, target: SocketAddr, path: &str) -> io::Result<usize> {
        let SocketAddr::V4(v4) = target else {
            return Err(io::Error::other("IPv4 targets only"));
        };
        let c = self.io.len();
        self.queued.push_back(c);
        self.io.push(Io {
            stream: None,
            target: v4,
            state: State::Queued,
            inbuf: Vec::new(),
            decoder: ws::Decoder::client(ws::Limits {
                max_frame_bytes: 16 << 20,
                max_message_bytes: 16 << 20,
            }),
            writable: false,
        });
        self.out.bufs.push(Vec::new());
        self.out.is_dirty.push(false);
        self.out.compress.push(None);
        self.path_of.push(path.to_string());
        Ok(c)
    }

    /// Drops connection `c` on purpose (no `Closed` event) and frees its buffers.
    pub fn close(&mut self, c: usize) {
        self.drop_conn(c);
        self.io[c].stream = None;
        self.io[c].inbuf = Vec::new();
        self.out.bufs[c] = Vec::new();
    }

    /// Starts queued connections while there is room.
    fn start_queued(&mut self) -> io::Result<()> {
        while self.starting < MAX_STARTING {
            let Some(c) = self.queued.pop_front() else {
                break;
            };
            let io = &mut self.io[c];
            if io.state != State::Queued {
                continue;
            }
            // For loopback targets, a few addresses of 127.1.0.0/16 of this process's own (by its
            // pid), so the TIME_WAIT ports an earlier run left behind are not in the way.
            let source = if io.target.ip().is_loopback() {
                let base =
                    u32::from(Ipv4Addr::new(127, 1, 0, 0)) + (std::process::id() % 8_000) * 8;
                Ipv4Addr::from(base + (c / PER_SOURCE) as u32)
            } else {
                Ipv4Addr::UNSPECIFIED
            };
            let mut stream = connect_from(source, io.target)?;
            self.poll.registry().register(
                &mut stream,
                Token(c),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            io.stream = Some(stream);
            io.state = State::Connecting;
            self.starting += 1;
        }
        Ok(())
    }

    /// Closes a connection abruptly.
    fn drop_conn(&mut self, c: usize) {
        let io = &mut self.io[c];
        if io.state != State::Closed {
            if let Some(stream) = io.stream.as_mut() {
                let _ = self.poll.registry().deregister(stream);
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
            match io.state {
                State::Open => self.open -= 1,
                State::Connecting | State::Handshake => self.starting -= 1,
                State::Queued | State::Closed => {}
            }
            io.state = State::Closed;
            self.closed += 1;
        }
    }

    /// One loop iteration: waits up to `timeout`, handles what is ready, calls `handler` for
    /// every event, then writes what the handlers queued.
    pub fn turn(
        &mut self,
        timeout: Duration,
        handler: &mut dyn FnMut(&mut Out, usize, Ev<'_>),
    ) -> io::Result<()> {
        self.start_queued()?;
        if !self.out.dirty.is_empty() {
            self.flush();
        }
        // A timeout finer than epoll's milliseconds: the timer wakes the poll in time.
        if !timeout.is_zero() && !timeout.subsec_nanos().is_multiple_of(1_000_000) {
            self.arm_timer(timeout)?;
        }
        if let Err(e) = self.poll.poll(&mut self.events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        let ready: Vec<(usize, bool, bool)> = self
            .events
            .iter()
            .map(|e| {
                (
                    e.token().0,
                    e.is_readable() || e.is_read_closed() || e.is_error(),
                    e.is_writable(),
                )
            })
            .collect();
        for (c, readable, writable) in ready {
            if c >= self.io.len() || self.io[c].state == State::Closed {
                continue;
            }
            if writable {
                self.io[c].writable = true;
                if self.io[c].state == State::Connecting {
                    self.start_handshake(c);
                }
                if !self.out.bufs[c].is_empty() && !self.out.is_dirty[c] {
                    self.out.is_dirty[c] = true;
                    self.out.dirty.push(c);
                }
            }
            if readable {
                self.read(c, handler);
            }
        }
        self.flush();
        Ok(())
    }

    /// Arms the timer once, `after` from now (a one-shot; an expiry not yet read is cleared, so
    /// the edge-triggered poll sees the next one).
    fn arm_timer(&mut self, after: Duration) -> io::Result<()> {
        let mut expiries = [0u8; 8];
        // SAFETY: reading 8 bytes into an 8-byte buffer from the timerfd this Net owns.
        unsafe {
            libc::read(
                self.timer.as_raw_fd(),
                expiries.as_mut_ptr() as *mut libc::c_void,
                8,
            )
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: a valid itimerspec for the timerfd this Net owns; the old value is not wanted.
        let rc = unsafe {
            libc::timerfd_settime(self.timer.as_raw_fd(), 0, &spec, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// [`Net::turn`] for scenarios that stop at the first lost connection: `handler` sees
    /// everything but `Closed`, which ends the run with its reason.
    pub fn step(
        &mut self,
        timeout: Duration,
        handler: &mut dyn FnMut(&mut Out, usize, Ev<'_>),
    ) -> Result<(), String> {
        let mut lost = None;
        self.turn(timeout, &mut |out, c, ev| match ev {
            Ev::Closed(why) => {
                lost.get_or_insert_with(|| why.to_string());
            }
            ev => handler(out, c, ev),
        })
        .map_err(|e| e.to_string())?;
        match lost {
            Some(why) => Err(format!("a connection closed: {why}")),
            None => Ok(()),
        }
    }

    fn start_handshake(&mut self, c: usize) {
        // A refused connect shows up as a read error next.
        self.io[c].state = State::Handshake;
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{}\r\n",
            self.path_of[c],
            self.host,
            if self.deflate {
                // What browsers offer.
                "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
            } else {
                ""
            }
        );
        // The upgrade goes before anything a handler queues.
        let mut buf = req.into_bytes();
        buf.extend_from_slice(&self.out.bufs[c]);
        self.out.bufs[c] = buf;
        if !self.out.is_dirty[c] {
            self.out.is_dirty[c] = true;
            self.out.dirty.push(c);
        }
    }

    fn fail(&mut self, c: usize, why: &str, handler: &mut dyn FnMut(&mut Out, usize, Ev<'_>)) {
        if self.io[c].state == State::Closed {
            return;
        }
        self.drop_conn(c);
        handler(&mut self.out, c, Ev::Closed(why));
    }

    fn read(&mut self, c: usize, handler: &mut dyn FnMut(&mut Out, usize, Ev<'_>)) {
        loop {
            let Some(stream) = self.io[c].stream.as_mut() else {
                return;
            };
            let n = match stream.read(&mut self.scratch) {
                Ok(0) => return self.fail(c, "closed by the server", handler),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.fail(c, &e.to_string(), handler),
            };
            self.rx_bytes += n as u64;
            let io = &mut self.io[c];
            io.inbuf.extend_from_slice(&self.scratch[..n]);
            if io.state == State::Handshake {
                let Some(end) = io.inbuf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                if !io.inbuf.starts_with(b"HTTP/1.1 101") {
                    let head = String::from_utf8_lossy(&io.inbuf[..end]).into_owned();
                    return self.fail(c, &format!("upgrade refused: {head}"), handler);
                }
                let head = String::from_utf8_lossy(&io.inbuf[..end]).to_ascii_lowercase();
                if head.contains("permessage-deflate") {
                    io.decoder
                        .enable_deflate(!head.contains("server_no_context_takeover"));
                    self.out.compress[c] = Some(if head.contains("client_no_context_takeover") {
                        Compress::Stateless
                    } else {
                        Compress::Own(Box::new(Deflater::new(15, true)))
                    });
                }
                io.inbuf.drain(..end + 4);
                io.state = State::Open;
                self.open += 1;
                self.starting -= 1;
                handler(&mut self.out, c, Ev::Open);
            }
            let io = &mut self.io[c];
            let mut pos = 0;
            let mut failure = None;
            while pos < io.inbuf.len() {
                match io.decoder.decode(&mut io.inbuf[pos..]) {
                    Ok((0, None)) => break,
                    Ok((used, ev)) => {
                        pos += used;
                        match ev {
                            Some(Event::Text(t)) => handler(&mut self.out, c, Ev::Text(t)),
                            Some(Event::Binary(b)) => handler(&mut self.out, c, Ev::Binary(b)),
                            Some(Event::Ping(p)) => self.out.send(c, OpCode::Pong, p),
                            Some(Event::Close { .. }) => {
                                failure = Some("close frame from the server".to_string());
                                break;
                            }
                            Some(Event::Pong(_)) | None => {}
                        }
                    }
                    Err(e) => {
                        failure = Some(e.to_string());
                        break;
                    }
                }
            }
            io.inbuf.drain(..pos);
            if let Some(why) = failure {
                return self.fail(c, &why, handler);
            }
        }
    }

    fn flush(&mut self) {
        let dirty = std::mem::take(&mut self.out.dirty);
        for c in dirty {
            self.out.is_dirty[c] = false;
            let io = &mut self.io[c];
            if io.state == State::Closed || io.state == State::Connecting || !io.writable {
                continue;
            }
            let Some(stream) = io.stream.as_mut() else {
                continue;
            };
            let buf = &mut self.out.bufs[c];
            let mut written = 0;
            while written < buf.len() {
                match stream.write(&buf[written..]) {
                    Ok(0) => break,
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        io.writable = false;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            buf.drain(..written);
            self.tx_bytes += written as u64;
        }
    }
}

/// Nanoseconds since `epoch`, for timestamps carried in payloads.
pub fn nanos_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}
