//! The WebSocket decoder on arbitrary bytes, fed in pieces of a size the input chooses: it may
//! refuse them (a close code), never panic, loop, or hold more than its limits.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wxchat::ws::{Decoder, Limits};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let piece = usize::from(first % 64) + 1;
    let limits = Limits {
        max_frame_bytes: 4096,
        max_message_bytes: 8192,
    };
    let mut decoder = Decoder::new(limits);
    let mut buf: Vec<u8> = Vec::new();
    for chunk in rest.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            let consumed = match decoder.decode(&mut buf) {
                Ok((n, _event)) => n,
                Err(_) => return,
            };
            if consumed == 0 {
                break;
            }
            buf.drain(..consumed);
            assert!(decoder.buffered_bytes() <= 8192 + 125);
        }
    }
});
