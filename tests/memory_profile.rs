//! What an idle connection holds, counted allocation by allocation: an in-process server whose
//! reactor thread's allocations are tagged (a header on each), so what it still holds after N
//! connections opened is known to the byte, whatever other threads did meanwhile. The figures
//! are counts, not timings, so the bounds below cannot flake on a busy machine; RSS (which adds
//! the allocator's pages and the connection records) is measured by `loadgen idle` and by
//! tests/memory.rs on the server binary, see BENCHMARKS.md "Memory per connection".

mod common;
use common::chat_client::server_api;
use common::*;
use serde_json::json;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::Mutex;

/// Tags every allocation with whether the reactor thread made it, and counts the reactor's live
/// ones: bytes asked for, bytes in jemalloc's size classes (what the server binary's allocator
/// hands out for them), and how many.
struct Counting;

static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
static LIVE_CLASS: AtomicI64 = AtomicI64::new(0);
static LIVE_COUNT: AtomicI64 = AtomicI64::new(0);
/// The same for every other thread (workers, the persister, the test's clients).
static OTHER_CLASS: AtomicI64 = AtomicI64::new(0);
/// Live reactor allocations by requested size: exact up to 1 KiB, then by power of two (count
/// and bytes), for the table that says what each one is.
static BY_SIZE: [AtomicI64; 1025] = [const { AtomicI64::new(0) }; 1025];
static LARGE_COUNT: [AtomicI64; 64] = [const { AtomicI64::new(0) }; 64];
static LARGE_BYTES: [AtomicI64; 64] = [const { AtomicI64::new(0) }; 64];

#[global_allocator]
static ALLOCATOR: Counting = Counting;

thread_local! {
    /// 0: not yet known; 1: the reactor thread; 2: any other.
    static KIND: Cell<u8> = const { Cell::new(0) };
}

fn on_reactor() -> bool {
    KIND.try_with(|k| {
        if k.get() == 0 {
            let mut name = [0u8; 16];
            // SAFETY: a 16-byte buffer, the size Linux thread names fit in.
            let ok = unsafe {
                libc::pthread_getname_np(libc::pthread_self(), name.as_mut_ptr().cast(), 16)
            } == 0;
            k.set(if ok && name.starts_with(b"reactor\0") {
                1
            } else {
                2
            });
        }
        k.get() == 1
    })
    .unwrap_or(false)
}

/// jemalloc's size class for a small or large request (4 classes per doubling above 128).
fn size_class(size: usize) -> usize {
    if size <= 8 {
        8
    } else if size <= 128 {
        (size + 15) & !15
    } else {
        let lg = usize::BITS - 1 - (size - 1).leading_zeros();
        let step = 1usize << (lg - 2);
        (size + step - 1) & !(step - 1)
    }
}

fn header(layout: Layout) -> usize {
    layout.align().max(16)
}

fn count(size: usize, sign: i64) {
    LIVE_BYTES.fetch_add(sign * size as i64, Relaxed);
    LIVE_CLASS.fetch_add(sign * size_class(size) as i64, Relaxed);
    LIVE_COUNT.fetch_add(sign, Relaxed);
    if size <= 1024 {
        BY_SIZE[size].fetch_add(sign, Relaxed);
    } else {
        let lg = (usize::BITS - size.leading_zeros()) as usize;
        LARGE_COUNT[lg].fetch_add(sign, Relaxed);
        LARGE_BYTES[lg].fetch_add(sign * size as i64, Relaxed);
    }
}

/// The live reactor allocations by size: (size or upper bound, count, bytes).
fn by_size() -> Vec<(usize, i64, i64)> {
    let mut v: Vec<(usize, i64, i64)> = (0..=1024)
        .map(|s| {
            let n = BY_SIZE[s].load(Relaxed);
            (s, n, n * s as i64)
        })
        .collect();
    v.extend((0..64).map(|lg| {
        (
            1usize << lg.min(63),
            LARGE_COUNT[lg].load(Relaxed),
            LARGE_BYTES[lg].load(Relaxed),
        )
    }));
    v
}

/// Prints what changed between two `by_size` snapshots, per connection.
fn print_by_size(before: &[(usize, i64, i64)], after: &[(usize, i64, i64)], n: usize) {
    for (i, (b, a)) in before.iter().zip(after).enumerate() {
        if a.1 != b.1 || a.2 != b.2 {
            let kind = if i <= 1024 { "B" } else { "B (up to)" };
            println!(
                "  {:>8} {kind}: {:+} allocations ({:+.2} per connection), {:+.1} B per connection",
                a.0,
                a.1 - b.1,
                (a.1 - b.1) as f64 / n as f64,
                (a.2 - b.2) as f64 / n as f64
            );
        }
    }
}

// SAFETY: every block is the system allocator's, `header(layout)` bytes larger, with the
// request's size and tag in the 16 bytes before the pointer handed out (the header keeps the
// requested alignment).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let h = header(layout);
        let Ok(full) = Layout::from_size_align(layout.size() + h, layout.align().max(16)) else {
            return std::ptr::null_mut();
        };
        let base = System.alloc(full);
        if base.is_null() {
            return base;
        }
        let tagged = on_reactor();
        let p = base.add(h);
        p.sub(16).cast::<usize>().write(layout.size());
        p.sub(8).cast::<usize>().write(usize::from(tagged));
        if tagged {
            count(layout.size(), 1);
        } else {
            OTHER_CLASS.fetch_add(size_class(layout.size()) as i64, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        let h = header(layout);
        let size = p.sub(16).cast::<usize>().read();
        if p.sub(8).cast::<usize>().read() == 1 {
            count(size, -1);
        } else {
            OTHER_CLASS.fetch_sub(size_class(size) as i64, Relaxed);
        }
        let full = Layout::from_size_align_unchecked(layout.size() + h, layout.align().max(16));
        System.dealloc(p.sub(h), full);
    }
}

#[derive(Clone, Copy, Debug)]
struct Live {
    other: i64,
    bytes: i64,
    class: i64,
    count: i64,
}

fn live() -> Live {
    Live {
        other: OTHER_CLASS.load(Relaxed),
        bytes: LIVE_BYTES.load(Relaxed),
        class: LIVE_CLASS.load(Relaxed),
        count: LIVE_COUNT.load(Relaxed),
    }
}

/// Per connection, between two snapshots.
#[derive(Debug)]
struct PerConn {
    /// Other threads' (mostly the store's caches, which are bounded, not per connection).
    other: f64,
    bytes: f64,
    class: f64,
    allocations: f64,
}

fn per_conn(before: Live, after: Live, n: usize) -> PerConn {
    let n = n as f64;
    PerConn {
        other: (after.other - before.other) as f64 / n,
        bytes: (after.bytes - before.bytes) as f64 / n,
        class: (after.class - before.class) as f64 / n,
        allocations: (after.count - before.count) as f64 / n,
    }
}

/// One in-process server at a time: the tag is by thread name.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn upgrade(addr: SocketAddr, path: &str) -> TcpStream {
    let mut s = connect(addr);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte: nothing past the response is consumed.
    while !got.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "handshake cut short");
        got.push(byte[0]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    s
}

/// Reads one server frame (unmasked) and returns its payload.
fn read_frame(s: &mut TcpStream) -> Vec<u8> {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).unwrap();
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).unwrap();
            usize::from(u16::from_be_bytes(b))
        }
        127 => panic!("unexpectedly large frame"),
        n => usize::from(n),
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).unwrap();
    payload
}

fn open_count(addr: SocketAddr) -> u64 {
    http_get(addr, "/healthz").json()["connections"]
        .as_u64()
        .unwrap()
}

const N: usize = 2000;

#[test]
fn what_an_idle_echo_connection_holds() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut server = TestServer::start("[ws]\necho_path = \"/echo\"\n");
    let addr = server.addr;
    let warm: Vec<TcpStream> = (0..100).map(|_| upgrade(addr, "/echo")).collect();
    wait_for("warm-up connections", || open_count(addr) > 100);
    let mut conns = Vec::with_capacity(N);
    let sizes = by_size();
    let before = live();
    for _ in 0..N {
        conns.push(upgrade(addr, "/echo"));
    }
    // The health request is a connection too: every WebSocket is open once it counts them.
    wait_for("every connection open", || {
        open_count(addr) > (N + 100) as u64
    });
    let after = live();
    print_by_size(&sizes, &by_size(), N);
    let p = per_conn(before, after, N);
    // Held in tables reserved up front (which the count above does not see grow).
    let record = wxchat::net::reactor::CONN_RECORD_BYTES;
    let endpoint = wxchat::app::ENDPOINT_SLOT_BYTES;
    let total = p.class + (record + endpoint) as f64;
    println!(
        "idle echo connection: {total:.1} B = {record} B record in the reactor's slab + {endpoint} B endpoint slot + reactor heap {:.1} B ({:.1} B requested, {:.3} allocations); other threads {:.1} B",
        p.class, p.bytes, p.allocations, p.other
    );
    assert!(
        total <= 300.0,
        "an idle echo connection holds {p:?} on the heap plus {record} + {endpoint} B"
    );
    drop(conns);
    drop(warm);
    server.stop();
}

#[test]
fn what_an_idle_chat_connection_holds() {
    const KEY: &str = "profile-key";
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut server = TestServer::start(&format!(
        "[api]\nkey = \"{KEY}\"\n[chat]\nmax_msgs_per_sec = 0\n"
    ));
    let addr = server.addr;
    let tokens: Vec<String> = (0..N + 100)
        .map(|i| {
            let r = server_api(
                addr,
                KEY,
                "user",
                &json!({ "app_uid": format!("idle-{i}"), "name": "idle" }),
            );
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()["data"]["token"].as_str().unwrap().to_string()
        })
        .collect();
    let login = |token: &str| {
        let mut s = upgrade(addr, &format!("/ws?token={token}"));
        let reply: serde_json::Value = serde_json::from_slice(&read_frame(&mut s)).unwrap();
        assert_eq!(reply["cmd"], "auth");
        assert_eq!(reply["code"], 200, "{reply}");
        s
    };
    let warm: Vec<TcpStream> = tokens[N..].iter().map(|t| login(t)).collect();
    let mut conns = Vec::with_capacity(N);
    let sizes = by_size();
    let before = live();
    for t in &tokens[..N] {
        conns.push(login(t));
    }
    let after = live();
    print_by_size(&sizes, &by_size(), N);
    let p = per_conn(before, after, N);
    let record = wxchat::net::reactor::CONN_RECORD_BYTES;
    let endpoint = wxchat::app::ENDPOINT_SLOT_BYTES;
    let session = wxchat::chat::state::SESSION_SLOT_BYTES;
    let total = p.class + (record + endpoint + session) as f64;
    println!(
        "idle authenticated chat connection: {total:.1} B = {record} B record in the reactor's slab + {endpoint} B endpoint slot + {session} B session slot + reactor heap {:.1} B ({:.1} B requested, {:.3} allocations); other threads {:.1} B",
        p.class, p.bytes, p.allocations, p.other
    );
    assert!(
        total <= 600.0,
        "an idle chat connection holds {p:?} on the heap plus {record} + {endpoint} + {session} B"
    );
    drop(conns);
    drop(warm);
    server.stop();
}
