//! The commit log: an append-only file beside the database (`<db>.commitlog`) that makes a
//! small batch durable with one `write` instead of a SQLite commit. Each record is one batch of
//! messages, already numbered (msg id and seq); the store applies the records to SQLite in large
//! transactions a little later and empties the file once everything in it is applied.
//!
//! A record is `[payload length u32][CRC-32 of the payload u32][payload]`, little-endian; the
//! payload is a message count (u32) and the messages (see `encode`). Reading stops at the first
//! record that is short or fails its checksum: a batch whose write did not complete was never
//! acknowledged (only a power loss can tear a `write`), so it is dropped with the tail.
//!
//! Only the process that holds the file's `flock` uses it: the lock is what keeps two
//! processes from numbering messages past each other (see `SqliteStore::set_sole_writer`).

use crate::store::{NewMessage, StoredMessage};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// A message as the log holds it: stored form plus the sender's client id (for the dedupe of
/// resends until the message is in SQLite).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    pub message: StoredMessage,
    pub client_msg_id: Option<String>,
}

/// The locked, open log file.
pub struct CommitLog {
    file: File,
    path: PathBuf,
    /// Bytes of whole records in the file (a failed write is cut back to this).
    len: u64,
    /// `[store] sqlite_synchronous = "full"`: each record is flushed before it counts.
    sync: bool,
}

/// Header bytes before each payload.
const HEADER: usize = 8;

/// Largest payload read back: a record claiming more is taken as garbage (a batch that goes
/// through the log is small; see `LOG_MAX_BATCH`).
const MAX_RECORD: usize = 64 << 20;

impl CommitLog {
    /// The log of the database at `db`.
    pub fn path_for(db: &Path) -> PathBuf {
        let mut name = db.as_os_str().to_owned();
        name.push(".commitlog");
        PathBuf::from(name)
    }

    /// Opens (creating) and locks the log. None when another holder has it locked.
    pub fn lock(db: &Path, sync: bool) -> io::Result<Option<CommitLog>> {
        let path = Self::path_for(db);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        // SAFETY: flock on a descriptor this function owns.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EWOULDBLOCK) => Ok(None),
                _ => Err(e),
            };
        }
        let len = file.metadata()?.len();
        Ok(Some(CommitLog {
            file,
            path,
            len,
            sync,
        }))
    }

    /// Every whole record in the file, in order; the torn or corrupt tail (if any) is cut off.
    pub fn read_all(&mut self) -> io::Result<Vec<Logged>> {
        let mut bytes = Vec::new();
        self.file.seek(SeekFrom::Start(0))?;
        self.file.read_to_end(&mut bytes)?;
        let mut out = Vec::new();
        let mut at = 0;
        while let Some((payload, next)) = record_at(&bytes, at) {
            match decode(payload) {
                Some(batch) => out.extend(batch),
                None => break,
            }
            at = next;
        }
        if at < bytes.len() {
            log::warn!(
                "store: {} ends in {} bytes that are not a whole record (a write cut short); dropped",
                self.path.display(),
                bytes.len() - at
            );
            self.file.set_len(at as u64)?;
        }
        self.len = at as u64;
        self.file.seek(SeekFrom::Start(self.len))?;
        Ok(out)
    }

    /// Appends one record (built by `encode`) with a single write.
    pub fn append(&mut self, record: &[u8]) -> io::Result<()> {
        let written = self.file.write_all(record).and_then(|()| {
            if self.sync {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        match written {
            Ok(()) => {
                self.len += record.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Cut a partial record off, so the next one starts on a boundary.
                let _ = self.file.set_len(self.len);
                let _ = self.file.seek(SeekFrom::Start(self.len));
                Err(e)
            }
        }
    }

    /// Empties the file once every record in it is applied to SQLite.
    pub fn truncate(&mut self) -> io::Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.len = 0;
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.len
    }
}

/// The payload of the record at `at` and where the next one starts, if a whole record with a
/// good checksum is there.
fn record_at(bytes: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let header = bytes.get(at..at + HEADER)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    if len > MAX_RECORD {
        return None;
    }
    let payload = bytes.get(at + HEADER..at + HEADER + len)?;
    (crc32fast::hash(payload) == crc).then_some((payload, at + HEADER + len))
}

/// Builds one record for `messages` (each with the msg id and seq it was given) into `out`.
pub fn encode<'a>(
    out: &mut Vec<u8>,
    messages: impl ExactSizeIterator<Item = (&'a NewMessage, u64, u64)>,
) {
    out.clear();
    out.extend_from_slice(&[0; HEADER]);
    out.extend_from_slice(&(messages.len() as u32).to_le_bytes());
    for (m, msg_id, seq) in messages {
        out.extend_from_slice(&msg_id.to_le_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&m.from_id.to_le_bytes());
        out.extend_from_slice(&m.to_id.to_le_bytes());
        out.extend_from_slice(&m.created_at.to_le_bytes());
        out.push(m.chat_type);
        out.push(m.msg_type);
        put_str(out, &m.conv_id);
        match &m.client_msg_id {
            Some(c) => {
                out.push(1);
                put_str(out, c);
            }
            None => out.push(0),
        }
        put_str(out, &m.body);
    }
    let len = (out.len() - HEADER) as u32;
    let crc = crc32fast::hash(&out[HEADER..]);
    out[0..4].copy_from_slice(&len.to_le_bytes());
    out[4..8].copy_from_slice(&crc.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Reads a payload back; None if it does not parse (treated like a bad checksum).
fn decode(payload: &[u8]) -> Option<Vec<Logged>> {
    let mut r = Reader(payload);
    let count = r.u32()? as usize;
    let mut out = Vec::with_capacity(count.min(payload.len() / 40));
    for _ in 0..count {
        let msg_id = r.u64()?;
        let seq = r.u64()?;
        let from_id = r.u64()?;
        let to_id = r.u64()?;
        let created_at = r.u64()? as i64;
        let chat_type = r.u8()?;
        let msg_type = r.u8()?;
        let conv_id = r.string()?;
        let client_msg_id = match r.u8()? {
            0 => None,
            1 => Some(r.string()?),
            _ => return None,
        };
        let body = r.string()?;
        out.push(Logged {
            message: StoredMessage {
                msg_id,
                conv_id,
                seq,
                chat_type,
                from_id,
                to_id,
                msg_type,
                body,
                created_at,
            },
            client_msg_id,
        });
    }
    r.0.is_empty().then_some(out)
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    }
    fn string(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(conv: &str, cmid: Option<&str>, body: &str) -> NewMessage {
        NewMessage {
            conv_id: conv.into(),
            chat_type: 0,
            from_id: 3,
            to_id: 4,
            msg_type: 1,
            body: body.into(),
            client_msg_id: cmid.map(Into::into),
            created_at: -5,
        }
    }

    #[test]
    fn records_read_back_and_a_torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let mut log = CommitLog::lock(&db, false).unwrap().unwrap();
        let a = msg("p_3_4", Some("c1"), "\"héllo\"");
        let b = msg("p_3_4", None, "{\"x\":1}");
        let mut rec = Vec::new();
        encode(&mut rec, [(&a, 7, 1), (&b, 8, 2)].into_iter());
        log.append(&rec).unwrap();
        encode(&mut rec, [(&a, 9, 3)].into_iter());
        log.append(&rec).unwrap();
        let whole = log.len();
        // A third record cut short, as a power loss mid-write would leave it.
        encode(&mut rec, [(&b, 10, 4)].into_iter());
        log.file.write_all(&rec[..rec.len() - 3]).unwrap();
        drop(log);

        let mut log = CommitLog::lock(&db, false).unwrap().unwrap();
        let got = log.read_all().unwrap();
        let ids: Vec<(u64, u64)> = got
            .iter()
            .map(|l| (l.message.msg_id, l.message.seq))
            .collect();
        assert_eq!(ids, vec![(7, 1), (8, 2), (9, 3)]);
        assert_eq!(got[0].message.body, "\"héllo\"");
        assert_eq!(got[0].client_msg_id.as_deref(), Some("c1"));
        assert_eq!(got[1].client_msg_id, None);
        assert_eq!(got[1].message.created_at, -5);
        assert_eq!(
            std::fs::metadata(CommitLog::path_for(&db)).unwrap().len(),
            whole
        );
        // Appends continue on the boundary.
        log.append(&rec).unwrap();
        assert_eq!(log.read_all().unwrap().len(), 4);
    }

    #[test]
    fn a_corrupt_record_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let mut log = CommitLog::lock(&db, false).unwrap().unwrap();
        let a = msg("g_1", Some("c1"), "\"a\"");
        let mut rec = Vec::new();
        encode(&mut rec, [(&a, 1, 1)].into_iter());
        log.append(&rec).unwrap();
        let mut bad = rec.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        log.append(&bad).unwrap();
        log.append(&rec).unwrap();
        assert_eq!(log.read_all().unwrap().len(), 1);
        log.truncate().unwrap();
        assert_eq!(log.read_all().unwrap(), vec![]);
    }

    #[test]
    fn only_one_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let first = CommitLog::lock(&db, false).unwrap();
        assert!(first.is_some());
        assert!(CommitLog::lock(&db, false).unwrap().is_none());
        drop(first);
        assert!(CommitLog::lock(&db, false).unwrap().is_some());
    }
}
