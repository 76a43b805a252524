//! Micro benchmarks of the hot paths, one line each: what one operation costs and how many per
//! second one core does.
//!
//!   cargo bench --bench micro            # all of them
//!   cargo bench --bench micro -- mask    # those whose name contains "mask"
//!
//! Under `cargo test` (no `--bench` flag) each runs a few iterations only and checks its result,
//! so the benchmarks cannot rot. Figures go to BENCHMARKS.md, never into assertions.

use std::hint::black_box;
use std::time::{Duration, Instant};
use wxchat::net::outqueue::OutQueue;
use wxchat::net::Frame;
use wxchat::store::StoredMessage;
use wxchat::wechat::crypto::{self, MsgCrypt};
use wxchat::wechat::message;
use wxchat::ws::{self, Decoder, Event, OpCode};

/// The server's allocator, so that the figures are the server's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// How long each benchmark is measured (after a warm-up of a fifth of that).
const MEASURE: Duration = Duration::from_millis(1500);

struct Runner {
    filter: Option<String>,
    full: bool,
}

impl Runner {
    /// Runs `op` repeatedly; each call does `per_call` operations over `bytes` bytes in all.
    fn bench(&self, name: &str, per_call: u64, bytes: u64, mut op: impl FnMut()) {
        if self.filter.as_deref().is_some_and(|f| !name.contains(f)) {
            return;
        }
        if !self.full {
            for _ in 0..3 {
                op();
            }
            println!("{name}: ok (smoke run)");
            return;
        }
        let run_for = |d: Duration, op: &mut dyn FnMut()| {
            let started = Instant::now();
            let mut calls = 0u64;
            while started.elapsed() < d {
                for _ in 0..16 {
                    op();
                }
                calls += 16;
            }
            (calls, started.elapsed())
        };
        run_for(MEASURE / 5, &mut op);
        let (calls, took) = run_for(MEASURE, &mut op);
        let ops = calls * per_call;
        let ns = took.as_nanos() as f64 / ops as f64;
        let per_sec = ops as f64 / took.as_secs_f64();
        let mut line = format!("{name:<44} {ns:>10.1} ns/op {per_sec:>14.0} op/s");
        if bytes > 0 {
            let gbs = (calls * bytes) as f64 / took.as_secs_f64() / 1e9;
            line.push_str(&format!(" {gbs:>8.2} GB/s"));
        }
        println!("{line}");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench");
    let filter = args.into_iter().find(|a| !a.starts_with("--"));
    let r = Runner { filter, full };
    frames(&r);
    masking(&r);
    utf8(&r);
    commands(&r);
    fan_out(&r);
    echo_out(&r);
    compression(&r);
    wechat(&r);
}

/// permessage-deflate on a typical message push and a long one: the cost per message and the
/// bytes saved (printed once, for BENCHMARKS.md).
fn compression(r: &Runner) {
    use wxchat::ws::deflate::{compress_stateless, inflate_stateless, Deflater};
    let push = r#"{"cmd":"message","data":{"msg_id":1048576,"conv_id":"p_1001_1002","seq":4242,"chat_type":0,"from_id":1001,"to_id":1002,"msg_type":0,"msg":"明天下午三点在会议室开会，记得带上周的报表。","time":1764672000123}}"#;
    let long = push.repeat(8);
    for (name, payload) in [("push 1 msg", push.to_string()), ("history 8 msgs", long)] {
        let mut z = Vec::new();
        compress_stateless(payload.as_bytes(), &mut z);
        if r.full {
            println!(
                "  deflate {name}: {} -> {} bytes ({:.0}%)",
                payload.len(),
                z.len(),
                100.0 * z.len() as f64 / payload.len() as f64
            );
        }
        let mut out = Vec::new();
        r.bench(
            &format!("deflate stateless, {name}"),
            1,
            payload.len() as u64,
            || {
                compress_stateless(black_box(payload.as_bytes()), &mut out);
                black_box(&out);
            },
        );
        r.bench(
            &format!("inflate stateless, {name}"),
            1,
            payload.len() as u64,
            || {
                inflate_stateless(black_box(&z), 1 << 20, &mut out).expect("inflates");
                assert_eq!(out.len(), payload.len());
            },
        );
        let mut kept = Deflater::new(15, true);
        r.bench(
            &format!("deflate context takeover, {name}"),
            1,
            payload.len() as u64,
            || {
                kept.compress(black_box(payload.as_bytes()), &mut out);
                out.clear();
            },
        );
    }
    // A shared frame is compressed once for all its recipients: the second call is a lookup.
    let frame = Frame::text(push.as_bytes());
    r.bench("shared frame deflated (cached)", 1, 0, || {
        black_box(frame.deflated(128));
    });
}

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// `count` masked text frames of `len` bytes each, back to back, as a client sends them.
fn masked_stream(count: usize, len: usize) -> Vec<u8> {
    let payload: String = "abcdefghijklmnopqrstuvwxyz0123456789"
        .chars()
        .cycle()
        .take(len)
        .collect();
    let frame = ws::masked_frame(OpCode::Text, payload.as_bytes(), MASK);
    frame.repeat(count)
}

/// Decodes everything in `buf` (unmasking in place); returns the payload bytes seen.
fn decode_all(decoder: &mut Decoder, buf: &mut [u8]) -> usize {
    let mut pos = 0;
    let mut seen = 0;
    while pos < buf.len() {
        let (n, ev) = decoder.decode(&mut buf[pos..]).expect("valid frames");
        if let Some(Event::Text(t)) = ev {
            seen += black_box(t).len();
        }
        if n == 0 {
            break;
        }
        pos += n;
    }
    seen
}

fn frames(r: &Runner) {
    for (count, len) in [(1000, 64), (100, 4096)] {
        let template = masked_stream(count, len);
        let mut buf = template.clone();
        let mut decoder = Decoder::default();
        // The copy restores the masked bytes (decoding unmasks in place); it is measured on its
        // own below so the two can be told apart.
        r.bench(
            &format!("frame parse+unmask+utf8 {len} B (x{count})"),
            count as u64,
            template.len() as u64,
            || {
                buf.copy_from_slice(&template);
                assert_eq!(decode_all(&mut decoder, &mut buf), count * len);
            },
        );
        r.bench(
            &format!("  (buffer copy alone, {len} B x{count})"),
            count as u64,
            template.len() as u64,
            || {
                buf.copy_from_slice(black_box(&template));
                black_box(&buf);
            },
        );
    }
    // The same 64-byte frames arriving in reads that end mid-frame (1000 bytes each): every
    // read leaves a frame's payload for the decoder to hold until the next one (its boxed
    // mid-message state, freed once the frame is complete) or a header for the caller to keep.
    let template = masked_stream(1000, 64);
    let mut buf = template.clone();
    let mut decoder = Decoder::default();
    let mut read = Vec::with_capacity(1100);
    r.bench(
        "frame parse 64 B in 1000-byte reads (x1000)",
        1000,
        template.len() as u64,
        || {
            buf.copy_from_slice(&template);
            let mut seen = 0;
            read.clear();
            for piece in buf.chunks(1000) {
                read.extend_from_slice(piece);
                let mut pos = 0;
                while pos < read.len() {
                    let (n, ev) = decoder.decode(&mut read[pos..]).expect("valid frames");
                    if let Some(Event::Text(t)) = ev {
                        seen += black_box(t).len();
                    }
                    if n == 0 {
                        break;
                    }
                    pos += n;
                }
                decoder.shrink();
                read.drain(..pos);
            }
            assert_eq!(seen, 1000 * 64);
        },
    );
    for len in [64usize, 4096] {
        let payload = vec![b'x'; len];
        let mut out = Vec::with_capacity(len + 16);
        r.bench(&format!("frame encode {len} B"), 1, len as u64, || {
            out.clear();
            ws::write_frame(OpCode::Text, black_box(&payload), &mut out);
            assert_eq!(out.len(), len + if len < 126 { 2 } else { 4 });
        });
    }
}

fn masking(r: &Runner) {
    for len in [64usize, 4096, 65536] {
        let mut buf = vec![0x5au8; len];
        r.bench(&format!("mask {len} B"), 1, len as u64, || {
            ws::apply_mask(black_box(&mut buf), MASK, 0);
        });
    }
}

fn utf8(r: &Runner) {
    let ascii = "hello, world. ".repeat(300);
    let chinese = "你好，世界。欢迎使用微信聊天。".repeat(100);
    for (name, text) in [("ascii", ascii), ("chinese", chinese)] {
        let bytes = text.into_bytes();
        r.bench(
            &format!("utf8 validate {name} {} B (simdutf8)", bytes.len()),
            1,
            bytes.len() as u64,
            || {
                assert!(simdutf8::basic::from_utf8(black_box(&bytes)).is_ok());
            },
        );
        r.bench(
            &format!("  (std::str::from_utf8, {name})"),
            1,
            bytes.len() as u64,
            || {
                assert!(std::str::from_utf8(black_box(&bytes)).is_ok());
            },
        );
    }
    // A fragmented text message: the decoder validates each fragment as it arrives (a
    // character may straddle two fragments).
    let text = "你好，世界。欢迎使用微信聊天。".repeat(100);
    let bytes = text.as_bytes();
    let mut stream = Vec::new();
    let pieces: Vec<&[u8]> = bytes.chunks(509).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let opcode = if i == 0 { 1u8 } else { 0 };
        let fin = i + 1 == pieces.len();
        let mut f = ws::masked_frame(OpCode::Binary, piece, MASK);
        f[0] = (if fin { 0x80 } else { 0 }) | opcode;
        stream.extend_from_slice(&f);
    }
    let mut buf = stream.clone();
    let mut decoder = Decoder::default();
    r.bench(
        &format!("utf8 fragmented chinese {} B", bytes.len()),
        1,
        bytes.len() as u64,
        || {
            buf.copy_from_slice(&stream);
            assert_eq!(decode_all(&mut decoder, &mut buf), bytes.len());
        },
    );
}

fn commands(r: &Runner) {
    let send = r#"{"cmd":"send","req_id":1234,"chat_type":0,"to_id":100023,"msg_type":0,"client_msg_id":"c-8f1e2a","msg":{"text":"明天下午三点开会，记得带上报告"}}"#;
    r.bench(
        "command decode send (text msg)",
        1,
        send.len() as u64,
        || {
            let c = wxchat::proto::parse_command(black_box(send)).expect("command");
            assert_eq!(c.cmd, "send");
            black_box(c.u64("to_id").expect("to_id"));
        },
    );
    r.bench(
        "typed send decode (the hot path)",
        1,
        send.len() as u64,
        || {
            let (_, args) = wxchat::proto::parse_send(black_box(send)).expect("a plain send");
            assert_eq!(args.to_id, 100_023);
            black_box(args);
        },
    );
    let sync = r#"{"cmd":"sync","req_id":"r7","conv_id":"p_100_100023","after_seq":4711}"#;
    r.bench("command decode sync", 1, sync.len() as u64, || {
        let c = wxchat::proto::parse_command(black_box(sync)).expect("command");
        black_box(c.u64("after_seq").expect("after_seq"));
    });
}

fn stored() -> StoredMessage {
    StoredMessage {
        msg_id: 9_876_543,
        conv_id: "g_42".into(),
        seq: 123_456,
        chat_type: 1,
        from_id: 100_023,
        to_id: 42,
        msg_type: 0,
        body: r#"{"text":"明天下午三点开会，记得带上报告"}"#.into(),
        created_at: 1_764_000_000_000,
    }
}

fn fan_out(r: &Runner) {
    let m = stored();
    r.bench("fan-out: serialise push + frame once", 1, 0, || {
        let payload = wxchat::proto::message_push(black_box(&m));
        black_box(Frame::text(payload.as_bytes()));
    });
    r.bench("send ack: serialise", 1, 0, || {
        black_box(wxchat::proto::ack_json(black_box(&m), false));
    });
    // A send names its conversation: checked to be spelled the one canonical way, and named
    // again for the stored message (what the reactor does per one-to-one send).
    r.bench("send conversation: parse + name", 1, 0, || {
        let Some(wxchat::proto::ConvRef::Friend(a, b)) =
            wxchat::proto::parse_conv(black_box("p_100023_100987"))
        else {
            panic!("a friend conversation")
        };
        black_box(wxchat::proto::friend_conv(a, b));
    });
    // A text message's body as it is stored: checked, then written as a JSON string.
    let text = serde_json::Value::from("明天下午三点开会，记得带上报告 (and a \"quote\")");
    let limits = wxchat::proto::BodyLimits {
        max_text_bytes: 4096,
    };
    r.bench("text body: validate + store form", 1, 0, || {
        let body = wxchat::proto::validate_body(0, black_box(&text), &limits).expect("valid");
        black_box(body);
    });
    // What each recipient costs once the frame exists: queue it on a connection's empty output
    // queue and hand the bytes to a writer (a Vec here, the socket in the server).
    let frame = Frame::text(wxchat::proto::message_push(&m).as_bytes());
    let members = 10_000;
    let mut queues: Vec<OutQueue> = (0..members).map(|_| OutQueue::default()).collect();
    let mut sink = Vec::with_capacity(1 << 20);
    r.bench(
        &format!("fan-out: queue + write per recipient ({members})"),
        members as u64,
        0,
        || {
            for q in queues.iter_mut() {
                q.push_frame(&frame);
            }
            for q in queues.iter_mut() {
                sink.clear();
                q.write_to(&mut sink).expect("write");
            }
            assert_eq!(sink.len(), frame.len());
        },
    );
}

/// An echo server's output per read: a reply queued on an empty queue and written at once
/// (ping-pong), or a read's worth of replies queued, then one write (firehose).
fn echo_out(r: &Runner) {
    let payload = [b'x'; 64];
    let mut q = OutQueue::default();
    let mut sink = Vec::with_capacity(1 << 20);
    r.bench("echo: queue a 64 B reply + write", 1, 0, || {
        sink.clear();
        q.push_ws(OpCode::Binary, black_box(&payload));
        q.write_to(&mut sink).expect("write");
        assert_eq!(sink.len(), 66);
    });
    r.bench("echo: queue 900 64 B replies + one write", 900, 0, || {
        sink.clear();
        for _ in 0..900 {
            q.push_ws(OpCode::Binary, black_box(&payload));
        }
        q.write_to(&mut sink).expect("write");
        assert_eq!(sink.len(), 900 * 66);
    });
}

fn wechat(r: &Runner) {
    let crypt = MsgCrypt::new(
        "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
        "wx5823bf96d3bd56c7",
    )
    .expect("key");
    let xml = "<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName>\
        <FromUserName><![CDATA[oyORnuP8q7ou2gfYjqLzSIWZf0rs]]></FromUserName>\
        <CreateTime>1764000000</CreateTime><MsgType><![CDATA[text]]></MsgType>\
        <Content><![CDATA[你好，我想咨询一下订单的配送时间]]></Content>\
        <MsgId>24389412341234123</MsgId></xml>";
    let encrypt = crypt.encrypt(xml, &[7u8; 16]);
    let (token, ts, nonce) = ("spamtest", "1764000000", "1320562132");
    let signature = crypto::signature(&[token, ts, nonce, &encrypt]);
    r.bench(
        &format!("wechat safe-mode decrypt ({} B XML)", xml.len()),
        1,
        0,
        || {
            let (plain, _) = crypt.decrypt(black_box(&encrypt)).expect("decrypt");
            assert_eq!(plain.len(), xml.len());
        },
    );
    r.bench("wechat callback: verify + decrypt + parse", 1, 0, || {
        assert!(crypto::verify(&[token, ts, nonce, &encrypt], &signature));
        let (plain, _) = crypt.decrypt(&encrypt).expect("decrypt");
        let fields = message::parse_xml(&plain).expect("xml");
        assert_eq!(fields.get("MsgType"), Some("text"));
    });
}
