//! The access-log journal: the reads a gateway served, durable before each answer, until the
//! chain records them (the batching and submission live in `api::access_log`).
//!
//! ```text
//! {dir}/{first entry number:020}.log: entry*
//! entry (73 bytes): number u64 BE | session [32] | record [16] | purpose u8
//!                   | checked_ms u64 BE | crc32 u32 BE (over the 69 bytes before it)
//! ```
//! Entries of a segment are numbered consecutively from the number in its name. A torn last
//! entry (a crash mid-write) is cut at start-up; damage anywhere else is an error, since reads
//! served could otherwise be lost from the trail unnoticed.

use ehrchain_types::transaction::AccessLogEntry;
use std::{
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
};

/// Bytes of one journal entry.
pub const ENTRY_BYTES: usize = 8 + AccessLogEntry::SIZE_BYTES + 4;

/// A segment is closed for new entries past this size.
pub const SEGMENT_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Journal entries with their numbers.
pub type Numbered = Vec<(u64, AccessLogEntry)>;

/// The file of the segment whose first entry is `first`.
pub fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.log"))
}

/// Append the entry numbered `number` to `out`.
pub fn encode(number: u64, entry: &AccessLogEntry, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&number.to_be_bytes());
    out.extend_from_slice(entry.session.as_ref());
    out.extend_from_slice(&entry.record);
    out.push(entry.purpose);
    out.extend_from_slice(&entry.checked_ms.to_be_bytes());
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// Decode one entry of exactly [`ENTRY_BYTES`]; `None` if it is damaged.
pub fn decode(bytes: &[u8]) -> Option<(u64, AccessLogEntry)> {
    if bytes.len() != ENTRY_BYTES {
        return None;
    }
    let (body, crc) = bytes.split_at(ENTRY_BYTES - 4);
    if crc32fast::hash(body).to_be_bytes() != crc {
        return None;
    }
    let number = u64::from_be_bytes(body[..8].try_into().ok()?);
    let session = ehrchain_types::decode_public_key(body[8..40].try_into().ok()?).ok()?;
    Some((
        number,
        AccessLogEntry {
            session,
            record: body[40..56].try_into().ok()?,
            purpose: body[56],
            checked_ms: u64::from_be_bytes(body[57..65].try_into().ok()?),
        },
    ))
}

/// Read every segment: the entries and the segments' first numbers. A torn tail of the last
/// segment is cut off (and synced); damage before it is an error.
pub fn replay(dir: &Path) -> std::io::Result<(Numbered, Vec<u64>)> {
    let mut segments: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    segments.sort_unstable();
    let mut entries = Vec::new();
    for (i, first) in segments.iter().enumerate() {
        let path = segment_path(dir, *first);
        let mut bytes = Vec::new();
        std::fs::File::open(&path)?.read_to_end(&mut bytes)?;
        let last = i + 1 == segments.len();
        let mut good = 0;
        let mut expected = *first;
        for chunk in bytes.chunks(ENTRY_BYTES) {
            match decode(chunk) {
                Some((number, entry)) if number == expected => {
                    entries.push((number, entry));
                    expected += 1;
                    good += ENTRY_BYTES;
                }
                _ if last => break,
                _ => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("access log segment {} is damaged", path.display()),
                    ));
                }
            }
        }
        if good < bytes.len() {
            tracing::warn!(
                segment = %path.display(),
                cut = bytes.len() - good,
                "cutting a torn tail off the access log"
            );
            let file = std::fs::OpenOptions::new().write(true).open(&path)?;
            file.set_len(good as u64)?;
            file.sync_all()?;
        }
    }
    Ok((entries, segments))
}

/// The segment being appended to.
pub struct Appender {
    dir: PathBuf,
    file: std::fs::File,
}

impl Appender {
    /// Open (or create) the segment whose first entry is `first` for appending, and make its
    /// name durable.
    pub fn open(dir: &Path, first: u64) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(dir, first))?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(Self {
            dir: dir.to_path_buf(),
            file,
        })
    }

    /// Append encoded entries, the first numbered `next`, and flush them (`fdatasync`). When
    /// the segment is full, a new one named `next` is started first, and `Some(next)` says so.
    pub fn append(&mut self, next: u64, bytes: &[u8]) -> std::io::Result<Option<u64>> {
        let mut started = None;
        if self.file.metadata()?.len() >= SEGMENT_BYTES_MAX {
            *self = Self::open(&self.dir, next)?;
            started = Some(next);
        }
        self.file.write_all(bytes)?;
        self.file.sync_data()?;
        Ok(started)
    }
}
