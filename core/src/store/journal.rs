//! The usage journal: an append-only file of usage records (with the ledger charges they carry)
//! that could not be written to the store yet, replayed into the store in order when it answers
//! again and at the next start after a crash.
//!
//! Each entry is framed as `len: u32 LE | crc32(payload): u32 LE | payload (JSON)`. A torn tail
//! (the process died mid-append) fails its length or checksum: reading stops there, and the bytes
//! from that point are copied aside (`usage.log.corrupt-<ms>`) before the journal is cleared, so
//! nothing is silently thrown away. The journal is bounded in bytes; appends do not fsync (the
//! writer syncs once per batch, never per request). One gateway owns a journal directory at a
//! time (an exclusive lock on `lock`).

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::UsageEntry;

/// Largest single entry accepted when reading (a corrupt length never allocates more).
const MAX_ENTRY: u32 = 16 * 1024 * 1024;

/// Errors of the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The journal is at its size limit.
    #[error("the usage journal is full ({limit} bytes)")]
    Full {
        /// The configured limit.
        limit: u64,
    },
    /// Reading or writing the file failed.
    #[error("usage journal {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Another process owns the directory.
    #[error(
        "another tollgate gateway uses the usage journal in {0}; give each gateway its own --data-dir (or --usage-journal-dir)"
    )]
    Locked(String),
}

/// The on-disk journal of one gateway.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    path: PathBuf,
    max_bytes: u64,
    file: Mutex<File>,
    /// Bytes in the file (entries appended and not yet cleared).
    len: AtomicU64,
    /// Bytes appended since the last fsync.
    unsynced: AtomicU64,
    _lock: File,
}

impl Journal {
    /// Opens (creating) the journal in `dir`, bounded to `max_bytes`.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, JournalError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| JournalError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(JournalError::Locked(dir.display().to_string()));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
        }
        let path = dir.join("usage.log");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(io(&path))?;
        let len = file.metadata().map_err(io(&path))?.len();
        Ok(Self {
            dir: dir.to_path_buf(),
            path,
            max_bytes,
            file: Mutex::new(file),
            len: AtomicU64::new(len),
            unsynced: AtomicU64::new(0),
            _lock: lock,
        })
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes held (0: nothing waits for the store).
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    /// Whether nothing waits in the journal.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn io_error(&self, source: std::io::Error) -> JournalError {
        JournalError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// Appends entries in order, without fsync. Stops at the size limit: returns how many were
    /// appended, or the error for the first one that was not.
    pub fn append(&self, entries: &[UsageEntry]) -> (usize, Option<JournalError>) {
        let mut framed = Vec::new();
        let mut lengths = Vec::with_capacity(entries.len());
        for entry in entries {
            let start = framed.len();
            frame(&mut framed, entry);
            lengths.push(framed.len() - start);
        }
        let Ok(mut file) = self.file.lock() else {
            return (
                0,
                Some(self.io_error(std::io::Error::other("journal lock poisoned"))),
            );
        };
        let len = self.len.load(Ordering::Acquire);
        let room = self.max_bytes.saturating_sub(len);
        let mut fits = 0;
        let mut bytes = 0;
        for l in &lengths {
            if (bytes + l) as u64 > room {
                break;
            }
            bytes += l;
            fits += 1;
        }
        if bytes > 0 {
            if let Err(e) = file.write_all(&framed[..bytes]) {
                // A partial write leaves a torn tail that reading discards; count what is there.
                let now = file.metadata().map_or(len, |m| m.len());
                self.len.store(now, Ordering::Release);
                return (0, Some(self.io_error(e)));
            }
            self.len.store(len + bytes as u64, Ordering::Release);
            self.unsynced.fetch_add(bytes as u64, Ordering::AcqRel);
        }
        let error = (fits < entries.len()).then_some(JournalError::Full {
            limit: self.max_bytes,
        });
        (fits, error)
    }

    /// Flushes appended entries to disk (once per writer batch, not per request).
    pub fn sync(&self) -> Result<(), JournalError> {
        if self.unsynced.swap(0, Ordering::AcqRel) == 0 {
            return Ok(());
        }
        let file = self
            .file
            .lock()
            .map_err(|_| self.io_error(std::io::Error::other("journal lock poisoned")))?;
        file.sync_data().map_err(|e| self.io_error(e))
    }

    /// A reader from the start of the journal.
    pub fn reader(&self) -> Result<JournalReader, JournalError> {
        let file = File::open(&self.path).map_err(|e| self.io_error(e))?;
        Ok(JournalReader {
            input: BufReader::new(file),
            offset: 0,
        })
    }

    /// Clears the journal if it holds exactly `read` bytes (everything a reader consumed is in
    /// the store and nothing was appended meanwhile); returns whether it did.
    pub fn clear_if(&self, read: u64) -> Result<bool, JournalError> {
        let file = self
            .file
            .lock()
            .map_err(|_| self.io_error(std::io::Error::other("journal lock poisoned")))?;
        if self.len.load(Ordering::Acquire) != read {
            return Ok(false);
        }
        file.set_len(0).map_err(|e| self.io_error(e))?;
        file.sync_all().map_err(|e| self.io_error(e))?;
        self.len.store(0, Ordering::Release);
        self.unsynced.store(0, Ordering::Release);
        Ok(true)
    }

    /// Copies the bytes from `offset` on (a torn or corrupt tail) to a file beside the journal
    /// for a person to inspect, then clears the journal (the caller has stored every entry
    /// before `offset`); returns the copy's path.
    pub fn set_aside_and_clear(&self, offset: u64) -> Result<PathBuf, JournalError> {
        let file = self
            .file
            .lock()
            .map_err(|_| self.io_error(std::io::Error::other("journal lock poisoned")))?;
        let aside = self
            .dir
            .join(format!("usage.log.corrupt-{}", crate::clock::now_ms()));
        let mut input = File::open(&self.path).map_err(|e| self.io_error(e))?;
        input
            .seek(SeekFrom::Start(offset))
            .map_err(|e| self.io_error(e))?;
        let mut output = File::create(&aside).map_err(|e| self.io_error(e))?;
        std::io::copy(&mut input, &mut output).map_err(|e| self.io_error(e))?;
        output.sync_all().map_err(|e| self.io_error(e))?;
        file.set_len(0).map_err(|e| self.io_error(e))?;
        file.sync_all().map_err(|e| self.io_error(e))?;
        self.len.store(0, Ordering::Release);
        self.unsynced.store(0, Ordering::Release);
        Ok(aside)
    }
}

/// Appends one framed entry to `out`.
fn frame(out: &mut Vec<u8>, entry: &UsageEntry) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    // Serializing plain data to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, entry);
    let payload = &out[start + 8..];
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let crc = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// What reading the next entry found.
#[derive(Debug)]
pub enum Next {
    /// A whole, intact entry.
    Entry(Box<UsageEntry>),
    /// The clean end of the journal.
    End,
    /// A torn or corrupt entry starts at this offset; nothing after it can be trusted.
    Corrupt(u64),
}

/// Reads journal entries in the order they were appended.
#[derive(Debug)]
pub struct JournalReader {
    input: BufReader<File>,
    offset: u64,
}

impl JournalReader {
    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next entry among the first `limit` bytes (the journal's length when asked: bytes
    /// below it are completely written, a concurrent append beyond it is not read half-done).
    pub fn next_entry(&mut self, limit: u64) -> Next {
        if self.offset >= limit {
            return Next::End;
        }
        let mut header = [0u8; 8];
        match read_full(&mut self.input, &mut header) {
            Ok(0) => return Next::End,
            Ok(8) => {}
            _ => return Next::Corrupt(self.offset),
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > MAX_ENTRY {
            return Next::Corrupt(self.offset);
        }
        let mut payload = vec![0u8; len as usize];
        if !matches!(read_full(&mut self.input, &mut payload), Ok(n) if n == payload.len()) {
            return Next::Corrupt(self.offset);
        }
        if crc32fast::hash(&payload) != crc {
            return Next::Corrupt(self.offset);
        }
        match serde_json::from_slice::<UsageEntry>(&payload) {
            Ok(entry) => {
                self.offset += 8 + u64::from(len);
                Next::Entry(Box::new(entry))
            }
            Err(_) => Next::Corrupt(self.offset),
        }
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::UsageRecord;
    use crate::store::ledger::Settlement;

    fn entry(id: &str) -> UsageEntry {
        UsageEntry {
            record: UsageRecord {
                id: id.into(),
                request_id: format!("req-{id}"),
                decisions: "[]".into(),
                cost_nanos: 7,
                ..UsageRecord::default()
            },
            charges: vec![Settlement {
                counter_id: "budget:b".into(),
                window_start_ms: 0,
                actual: 7,
                lease: None,
                hold: None,
            }],
        }
    }

    fn read_all(journal: &Journal) -> (Vec<String>, Option<u64>) {
        let mut reader = journal.reader().unwrap();
        let mut ids = Vec::new();
        loop {
            match reader.next_entry(journal.len()) {
                Next::Entry(e) => ids.push(e.record.id),
                Next::End => return (ids, None),
                Next::Corrupt(at) => return (ids, Some(at)),
            }
        }
    }

    #[test]
    fn entries_survive_a_reopen_in_order_with_their_charges() {
        let dir = tempfile::tempdir().unwrap();
        {
            let journal = Journal::open(dir.path(), 1 << 20).unwrap();
            let (n, err) = journal.append(&[entry("a"), entry("b")]);
            assert_eq!((n, err.is_none()), (2, true));
            journal.append(&[entry("c")]);
            journal.sync().unwrap();
        }
        let journal = Journal::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            read_all(&journal),
            (vec!["a".into(), "b".into(), "c".into()], None)
        );
        let mut reader = journal.reader().unwrap();
        let Next::Entry(first) = reader.next_entry(journal.len()) else {
            panic!("no entry")
        };
        assert_eq!(first.charges[0].actual, 7);
    }

    #[test]
    fn a_torn_tail_is_detected_and_the_entries_before_it_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), 1 << 20).unwrap();
        journal.append(&[entry("a"), entry("b")]);
        let whole = journal.len();
        drop(journal);
        // The process died in the middle of appending a third entry.
        let path = dir.path().join("usage.log");
        let mut bytes = std::fs::read(&path).unwrap();
        let mut third = Vec::new();
        frame(&mut third, &entry("c"));
        bytes.extend_from_slice(&third[..third.len() / 2]);
        std::fs::write(&path, &bytes).unwrap();
        let journal = Journal::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            read_all(&journal),
            (vec!["a".into(), "b".into()], Some(whole))
        );
        let aside = journal.set_aside_and_clear(whole).unwrap();
        assert_eq!(std::fs::read(aside).unwrap(), &third[..third.len() / 2]);
        assert!(journal.is_empty());
    }

    #[test]
    fn a_flipped_byte_fails_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), 1 << 20).unwrap();
        journal.append(&[entry("a"), entry("b")]);
        drop(journal);
        let path = dir.path().join("usage.log");
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();
        let journal = Journal::open(dir.path(), 1 << 20).unwrap();
        let (ids, corrupt) = read_all(&journal);
        assert_eq!(ids, ["a"]);
        assert!(corrupt.is_some());
    }

    #[test]
    fn appends_stop_at_the_size_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut one = Vec::new();
        frame(&mut one, &entry("a"));
        let journal = Journal::open(dir.path(), one.len() as u64 * 2 + 1).unwrap();
        let (n, err) = journal.append(&[entry("a"), entry("b"), entry("c")]);
        assert_eq!(n, 2);
        assert!(matches!(err, Some(JournalError::Full { .. })));
        assert_eq!(read_all(&journal).0, ["a", "b"]);
    }

    #[test]
    fn clearing_waits_for_entries_appended_during_a_replay() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), 1 << 20).unwrap();
        journal.append(&[entry("a")]);
        let mut reader = journal.reader().unwrap();
        assert!(matches!(reader.next_entry(journal.len()), Next::Entry(_)));
        journal.append(&[entry("b")]);
        assert!(!journal.clear_if(reader.offset()).unwrap());
        assert!(matches!(reader.next_entry(journal.len()), Next::Entry(_)));
        assert!(journal.clear_if(reader.offset()).unwrap());
        assert!(journal.is_empty());
        assert_eq!(read_all(&journal), (vec![], None));
    }

    #[test]
    fn a_second_gateway_cannot_share_a_journal_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Journal::open(dir.path(), 1 << 20).unwrap();
        let second = Journal::open(dir.path(), 1 << 20);
        assert!(matches!(second, Err(JournalError::Locked(_))));
    }
}
