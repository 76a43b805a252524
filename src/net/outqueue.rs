//! A connection's output queue: small writes are coalesced into owned chunks (one `writev` entry
//! for many frames), large shared frames are queued by reference (never copied per recipient).
//! The queue owns no memory while empty, so an idle connection holds only its 16 bytes.

use super::Frame;
use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

/// Owned chunks grow up to this before a new one is started.
const COALESCE_MAX: usize = 64 * 1024;
/// Shared frames up to this size are copied into the owned tail: one memcpy is cheaper than an
/// extra iovec and keeps the refcount traffic off the hot path.
const COPY_SHARED_MAX: usize = 512;
/// iovecs per `writev` call.
const MAX_IOVECS: usize = 64;

enum Chunk {
    Owned(Vec<u8>),
    Shared(Frame),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Shared(f) => f.bytes(),
        }
    }
}

/// Result of a flush attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Flush {
    /// Everything queued was written.
    Done,
    /// The socket would block; the rest waits for WRITABLE.
    Blocked,
}

/// 16 bytes in the connection's record; empty, it owns no memory.
#[derive(Default)]
pub struct OutQueue(State);

#[derive(Default)]
enum State {
    #[default]
    Empty,
    /// The whole queue is one shared frame, the common case of a fan-out to idle connections:
    /// queued by reference, so a recipient costs no allocation and no copy. `off` bytes of it
    /// are written (frames of 4 GiB and more never queue this way).
    Lone { frame: Frame, off: u32 },
    /// Anything more: the chunks, boxed so an empty queue stays small.
    Many(Box<Chunks>),
}

struct Chunks {
    chunks: VecDeque<Chunk>,
    /// Bytes of the head chunk already written.
    head_off: usize,
    /// Bytes queued and not yet written.
    bytes: usize,
}

impl OutQueue {
    /// Bytes waiting to be written.
    pub fn len(&self) -> usize {
        match &self.0 {
            State::Empty => 0,
            State::Lone { frame, off } => frame.len() - *off as usize,
            State::Many(m) => m.bytes,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when the queue holds heap memory (chunks); an empty or lone-frame queue does not.
    pub fn owns_chunks(&self) -> bool {
        matches!(self.0, State::Many(_))
    }

    /// Appends bytes, coalescing them into the owned tail chunk.
    pub fn push_bytes(&mut self, data: &[u8]) {
        self.append_owned(data.len(), |v| v.extend_from_slice(data));
    }

    /// Appends a shared frame: referenced when it is all there is to send or when large, copied
    /// (coalesced with its neighbours) otherwise.
    pub fn push_frame(&mut self, frame: &Frame) {
        if matches!(self.0, State::Empty) && u32::try_from(frame.len()).is_ok() {
            self.0 = State::Lone {
                frame: frame.clone(),
                off: 0,
            };
            return;
        }
        if frame.len() <= COPY_SHARED_MAX {
            self.push_bytes(frame.bytes());
        } else {
            let m = self.many();
            m.bytes += frame.len();
            m.chunks.push_back(Chunk::Shared(frame.clone()));
        }
    }

    /// Appends a WebSocket frame encoded in place (header then payload): no intermediate buffer.
    #[inline]
    pub fn push_ws(&mut self, opcode: crate::ws::OpCode, payload: &[u8]) {
        let mut header = [0u8; 10];
        let n = crate::ws::encode_header(opcode, payload.len(), &mut header);
        if let Some(v) = self.tail_with_room(n + payload.len()) {
            // The common case, every reply of a read after the first: two copies into the
            // chunk already there.
            v.extend_from_slice(&header[..n]);
            v.extend_from_slice(payload);
            return;
        }
        self.append_owned(n + payload.len(), |v| {
            v.extend_from_slice(&header[..n]);
            v.extend_from_slice(payload);
        });
    }

    /// The owned tail chunk, when `extra` more bytes fit in it without growing it; counts them
    /// as queued (the caller appends exactly `extra` bytes).
    #[inline]
    fn tail_with_room(&mut self, extra: usize) -> Option<&mut Vec<u8>> {
        let State::Many(m) = &mut self.0 else {
            return None;
        };
        match m.chunks.back_mut() {
            Some(Chunk::Owned(v)) if v.capacity() - v.len() >= extra => {
                m.bytes += extra;
                Some(v)
            }
            _ => None,
        }
    }

    /// Appends a permessage-deflate frame (RSV1 set) of an already compressed payload.
    pub fn push_ws_compressed(&mut self, opcode: crate::ws::OpCode, compressed: &[u8]) {
        let mut header = [0u8; 10];
        let n = crate::ws::encode_header(opcode, compressed.len(), &mut header);
        header[0] |= 0x40;
        self.append_owned(n + compressed.len(), |v| {
            v.extend_from_slice(&header[..n]);
            v.extend_from_slice(compressed);
        });
    }

    /// Runs `fill` (which appends exactly `extra` bytes) on the owned tail chunk, starting a new
    /// chunk when the tail is shared or full.
    fn append_owned(&mut self, extra: usize, fill: impl FnOnce(&mut Vec<u8>)) {
        let m = self.many();
        // A chunk is never grown: growing copied the whole backlog again at every doubling
        // (a quarter of the reactor's time in a 10,000-member fan-out to slow readers). A full
        // chunk is followed by one as large as the backlog, so chunks stay few as it builds up.
        let room = extra.max(m.bytes.clamp(256, COALESCE_MAX));
        m.bytes += extra;
        if let Some(Chunk::Owned(v)) = m.chunks.back_mut() {
            if v.len() + extra <= v.capacity() {
                fill(v);
                return;
            }
        }
        let mut v = Vec::with_capacity(room);
        fill(&mut v);
        m.chunks.push_back(Chunk::Owned(v));
    }

    /// The chunks, made on the first thing queued after a lone frame or an empty queue. A lone
    /// frame becomes the head chunk (copied when small, so what follows can be coalesced with
    /// it); what of it was written stays in `head_off`.
    fn many(&mut self) -> &mut Chunks {
        if !matches!(self.0, State::Many(_)) {
            let mut m = Box::new(Chunks {
                chunks: VecDeque::new(),
                head_off: 0,
                bytes: 0,
            });
            if let State::Lone { frame, off } = std::mem::take(&mut self.0) {
                m.head_off = off as usize;
                m.bytes = frame.len() - off as usize;
                if frame.len() <= COPY_SHARED_MAX {
                    let mut v = Vec::with_capacity(frame.len().max(256));
                    v.extend_from_slice(frame.bytes());
                    m.chunks.push_back(Chunk::Owned(v));
                } else {
                    m.chunks.push_back(Chunk::Shared(frame));
                }
            }
            self.0 = State::Many(m);
        }
        match &mut self.0 {
            State::Many(m) => m,
            _ => unreachable!("made just above"),
        }
    }

    /// Drops everything not yet started, keeping a partially written head chunk so the byte
    /// stream stays well-formed (used before a forced close frame).
    pub fn truncate_unstarted(&mut self) {
        match &mut self.0 {
            State::Empty => {}
            State::Lone { off, .. } => {
                if *off == 0 {
                    self.0 = State::Empty;
                }
            }
            State::Many(m) => {
                let keep = if m.head_off > 0 { 1 } else { 0 };
                m.chunks.truncate(keep);
                m.bytes = m.chunks.front().map_or(0, |c| c.bytes().len() - m.head_off);
                if m.chunks.is_empty() {
                    self.0 = State::Empty;
                }
            }
        }
    }

    /// Writes as much as the socket takes, in `writev` batches. Once everything is written the
    /// queue frees its memory.
    pub fn write_to<W: Write>(&mut self, w: &mut W) -> io::Result<Flush> {
        let flush = match &mut self.0 {
            State::Empty => Flush::Done,
            State::Lone { frame, off } => write_lone(w, frame, off)?,
            State::Many(m) => m.write_to(w)?,
        };
        if flush == Flush::Done {
            self.0 = State::Empty;
        }
        Ok(flush)
    }
}

fn write_lone<W: Write>(w: &mut W, frame: &Frame, off: &mut u32) -> io::Result<Flush> {
    while (*off as usize) < frame.len() {
        match w.write(&frame.bytes()[*off as usize..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            // At most what is left of a frame under 4 GiB.
            Ok(n) => *off += n as u32,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flush::Blocked),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Flush::Done)
}

impl Chunks {
    fn write_to<W: Write>(&mut self, w: &mut W) -> io::Result<Flush> {
        while self.bytes > 0 {
            let mut slices: [IoSlice<'_>; MAX_IOVECS] = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            for (i, chunk) in self.chunks.iter().enumerate().take(MAX_IOVECS) {
                let b = chunk.bytes();
                slices[i] = IoSlice::new(if i == 0 { &b[self.head_off..] } else { b });
                count += 1;
            }
            match w.write_vectored(&slices[..count]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.consume(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flush::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Flush::Done)
    }

    fn consume(&mut self, mut n: usize) {
        self.bytes -= n.min(self.bytes);
        while n > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let left = front.bytes().len() - self.head_off;
            if n >= left {
                n -= left;
                self.head_off = 0;
                self.chunks.pop_front();
            } else {
                self.head_off += n;
                n = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `cap` bytes per call, then blocks after `budget` bytes.
    struct Trickle {
        out: Vec<u8>,
        cap: usize,
        budget: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.cap).min(self.budget);
            self.out.extend_from_slice(&buf[..n]);
            self.budget -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn chunks(q: &OutQueue) -> &VecDeque<Chunk> {
        match &q.0 {
            State::Many(m) => &m.chunks,
            _ => panic!("no chunks"),
        }
    }

    #[test]
    fn an_idle_queue_is_sixteen_bytes_and_owns_nothing() {
        assert_eq!(std::mem::size_of::<OutQueue>(), 16);
        let mut q = OutQueue::default();
        q.push_ws(crate::ws::OpCode::Text, b"hello");
        assert!(q.owns_chunks());
        assert_eq!(q.write_to(&mut Vec::new()).unwrap(), Flush::Done);
        assert!(matches!(q.0, State::Empty));
    }

    #[test]
    fn preserves_order_across_partial_writes() {
        let mut q = OutQueue::default();
        let big = Frame::binary(&[7u8; 2000]);
        q.push_bytes(b"abc");
        q.push_frame(&big);
        q.push_ws(crate::ws::OpCode::Text, b"hi");
        let total = 3 + big.len() + 4;
        assert_eq!(q.len(), total);
        let mut w = Trickle {
            out: Vec::new(),
            cap: 7,
            budget: 100,
        };
        assert_eq!(q.write_to(&mut w).unwrap(), Flush::Blocked);
        assert_eq!(q.len(), total - 100);
        w.budget = usize::MAX;
        assert_eq!(q.write_to(&mut w).unwrap(), Flush::Done);
        let mut expect = b"abc".to_vec();
        expect.extend_from_slice(big.bytes());
        expect.extend_from_slice(&[0x81, 2, b'h', b'i']);
        assert_eq!(w.out, expect);
        assert!(q.is_empty());
        assert!(!q.owns_chunks(), "memory released when drained");
    }

    #[test]
    fn a_lone_frame_is_referenced_then_joins_what_follows() {
        let mut q = OutQueue::default();
        let small = Frame::text(b"hello");
        q.push_frame(&small);
        assert!(matches!(q.0, State::Lone { .. }), "no allocation");
        let mut w = Trickle {
            out: Vec::new(),
            cap: 3,
            budget: 3,
        };
        assert_eq!(q.write_to(&mut w).unwrap(), Flush::Blocked);
        // A forced close keeps the half-written frame whole.
        let mut t = OutQueue::default();
        t.push_frame(&small);
        if let State::Lone { off, .. } = &mut t.0 {
            *off = 2;
        }
        t.truncate_unstarted();
        assert_eq!(t.len(), small.len() - 2);
        // Something else queued behind the half-written frame: both go out in order.
        q.push_ws(crate::ws::OpCode::Text, b"next");
        assert_eq!(chunks(&q).len(), 1, "coalesced");
        w.budget = 100;
        assert_eq!(q.write_to(&mut w).unwrap(), Flush::Done);
        let mut expected = small.bytes().to_vec();
        expected.extend_from_slice(&crate::ws::frame(crate::ws::OpCode::Text, b"next"));
        assert_eq!(w.out, expected);
        assert!(q.is_empty() && matches!(q.0, State::Empty));

        // A large lone frame stays shared when more follows.
        let big = Frame::binary(&[9u8; 4000]);
        q.push_frame(&big);
        q.push_frame(&small);
        assert!(matches!(chunks(&q).front(), Some(Chunk::Shared(_))));
        assert_eq!(q.len(), big.len() + small.len());
        q.truncate_unstarted();
        assert!(q.is_empty() && !q.owns_chunks());
    }

    #[test]
    fn small_frames_coalesce_into_one_chunk() {
        let mut q = OutQueue::default();
        let f = Frame::text(b"hello");
        for _ in 0..100 {
            q.push_frame(&f);
        }
        // 700 bytes: chunks of 256, 256 and 512 bytes (each as large as the backlog).
        assert_eq!(chunks(&q).len(), 3);
        assert_eq!(q.len(), 100 * f.len());
        // A backlog of 10 MB: chunks double up to 64 KiB, then stay there; none is regrown.
        for _ in 0..1_500_000 {
            q.push_frame(&f);
        }
        let sizes: Vec<usize> = chunks(&q).iter().map(|c| c.bytes().len()).collect();
        assert!(sizes.len() < 170, "{} chunks", sizes.len());
        assert!(chunks(&q).iter().all(|c| match c {
            Chunk::Owned(v) => v.capacity() <= COALESCE_MAX,
            Chunk::Shared(_) => false,
        }));
        let mut out = Vec::new();
        assert_eq!(q.write_to(&mut out).unwrap(), Flush::Done);
        assert_eq!(out.len(), 1_500_100 * f.len());
    }

    #[test]
    fn truncate_keeps_partially_written_head() {
        let mut q = OutQueue::default();
        q.push_frame(&Frame::binary(&[1u8; 1000]));
        q.push_frame(&Frame::binary(&[2u8; 1000]));
        let mut w = Trickle {
            out: Vec::new(),
            cap: 10,
            budget: 10,
        };
        assert_eq!(q.write_to(&mut w).unwrap(), Flush::Blocked);
        q.truncate_unstarted();
        assert_eq!(q.len(), 1004 - 10);
        let mut q2 = OutQueue::default();
        q2.push_bytes(b"x");
        q2.truncate_unstarted();
        assert!(q2.is_empty());
    }
}
