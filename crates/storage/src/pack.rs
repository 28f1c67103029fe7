//! Blobs packed into append-only segment files on local disk.
//!
//! One file per blob cost five system calls and a fresh inode per record on every node, and on
//! ext4 the inode allocator slows down sharply after many recent deletions (it skips inodes
//! deleted in the last 30 to 60 s, reading their table blocks to find out): at 2,000 records/s
//! a third of a node's CPU went to creating files. A pack appends each blob to the current
//! segment with one positioned write, and a group of writes shares one `fdatasync`.
//!
//! ```text
//! {dir}/{segment:08}.pack: entry*
//! entry: magic "EHRB" | state u8 | hash [32] | staged_ms u64 | len u32 | crc32 u32 | body [len]
//! ```
//! `state` is 1 staged (an upload whose anchor is not final yet), 2 stored, 0 erased. The CRC
//! covers hash, staged_ms, len and body, not the state, which changes in place: promotion
//! rewrites that one byte. Erasing an entry sets its state to 0 and punches the body out of
//! the file (`fallocate(PUNCH_HOLE)`, or zeros where the file system cannot punch), so the
//! ciphertext and its wraps are gone from the disk, not just unlinked. A segment whose
//! entries are all erased is deleted after the next sync.
//!
//! The index (hash to position) lives in memory and is rebuilt at start-up from the entry
//! headers. The last segment is also checked entry by entry against its CRCs: a damaged entry
//! is erased (the keeper fetches it again from a peer), and the segment is cut where a header
//! is torn or an entry runs past the end, which is where a crash interrupted an append.

use crate::{Error, Result, io};
use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

const MAGIC: &[u8; 4] = b"EHRB";
const HEADER_BYTES: u64 = 4 + 1 + 32 + 8 + 4 + 4;
/// A segment is closed once it grows past this many bytes.
pub const SEGMENT_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// Largest body one entry may hold (an envelope of the largest record and its wraps).
pub const ENTRY_BYTES_MAX: u64 = 128 * 1024 * 1024;

pub const ERASED: u8 = 0;
pub const STAGED: u8 = 1;
pub const STORED: u8 = 2;

/// Where one entry lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    segment: u32,
    offset: u64,
    len: u32,
    pub staged_ms: u64,
}

struct Segment {
    file: Arc<File>,
    len: u64,
    live: usize,
    dirty: bool,
}

#[derive(Default)]
struct Inner {
    segments: BTreeMap<u32, Segment>,
    active: u32,
    stored: HashMap<[u8; 32], Slot>,
    staged: HashMap<[u8; 32], Slot>,
}

pub struct Pack {
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// Serializes syncs, so a sync returns only after every earlier write is durable.
    sync_lock: Mutex<()>,
}

fn segment_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:08}.pack"))
}

fn open_segment(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io(path))
}

fn checksum(hash: &[u8; 32], staged_ms: u64, body: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(hash);
    crc.update(&staged_ms.to_be_bytes());
    crc.update(&(body.len() as u32).to_be_bytes());
    crc.update(body);
    crc.finalize()
}

/// The bytes of one pack entry (the layout at the top of this module).
pub fn encode_entry(state: u8, hash: &[u8; 32], staged_ms: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES as usize + body.len());
    out.extend_from_slice(MAGIC);
    out.push(state);
    out.extend_from_slice(hash);
    out.extend_from_slice(&staged_ms.to_be_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&checksum(hash, staged_ms, body).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Free the bytes of `[offset, offset + len)`: punched out of the file, or zeroed.
fn punch(file: &File, offset: u64, len: u64, at: &Path) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    if len == 0 {
        return Ok(());
    }
    // SAFETY: `fallocate` on a valid descriptor that `file` keeps open; the range is within
    // the file, and KEEP_SIZE leaves its length alone.
    let punched = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    } == 0;
    if !punched {
        let zeros = vec![0u8; len.min(1 << 20) as usize];
        let mut done = 0;
        while done < len {
            let chunk = (len - done).min(zeros.len() as u64) as usize;
            file.write_all_at(&zeros[..chunk], offset + done)
                .map_err(io(at))?;
            done += chunk as u64;
        }
    }
    Ok(())
}

impl Pack {
    /// Open (or create) the pack in `dir`, rebuilding its index.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut ids: Vec<u32> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".pack")?.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        let mut inner = Inner::default();
        let mut superseded = Vec::new();
        let last = ids.last().copied();
        for id in ids {
            let path = segment_path(dir, id);
            let file = open_segment(&path)?;
            let segment = scan(
                &file,
                id,
                &path,
                Some(id) == last,
                &mut inner,
                &mut superseded,
            )?;
            inner.segments.insert(id, segment);
        }
        if inner.segments.is_empty() {
            let path = segment_path(dir, 1);
            inner.segments.insert(
                1,
                Segment {
                    file: Arc::new(open_segment(&path)?),
                    len: 0,
                    live: 0,
                    dirty: true,
                },
            );
        }
        inner.active = *inner.segments.keys().next_back().expect("one segment");
        let pack = Self {
            dir: dir.to_path_buf(),
            inner: Mutex::new(inner),
            sync_lock: Mutex::new(()),
        };
        if !superseded.is_empty() {
            let mut inner = pack.lock();
            for slot in superseded {
                pack.erase(&mut inner, slot)?;
            }
            drop(inner);
            pack.sync()?;
        }
        Ok(pack)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("pack lock")
    }

    /// Append an entry; it replaces an earlier entry of the same kind for the same hash.
    /// Returns the segment written, for [`Pack::sync_segments`].
    pub fn append(
        &self,
        staged: bool,
        hash: &[u8; 32],
        staged_ms: u64,
        body: &[u8],
    ) -> Result<u32> {
        if body.len() as u64 > ENTRY_BYTES_MAX {
            return Err(Error::TooLarge(body.len()));
        }
        let entry = encode_entry(if staged { STAGED } else { STORED }, hash, staged_ms, body);
        let mut inner = self.lock();
        let active_len = inner.segments[&inner.active].len;
        if active_len > 0 && active_len + entry.len() as u64 > SEGMENT_BYTES_MAX {
            let id = inner.active + 1;
            let path = segment_path(&self.dir, id);
            let file = Arc::new(open_segment(&path)?);
            file.set_len(0).map_err(io(&path))?;
            inner.segments.insert(
                id,
                Segment {
                    file,
                    len: 0,
                    live: 0,
                    dirty: true,
                },
            );
            inner.active = id;
        }
        let id = inner.active;
        let segment = inner.segments.get_mut(&id).expect("active segment");
        let offset = segment.len;
        segment
            .file
            .write_all_at(&entry, offset)
            .map_err(io(&segment_path(&self.dir, id)))?;
        segment.len += entry.len() as u64;
        segment.live += 1;
        segment.dirty = true;
        let slot = Slot {
            segment: id,
            offset,
            len: body.len() as u32,
            staged_ms,
        };
        let map = if staged {
            &mut inner.staged
        } else {
            &mut inner.stored
        };
        if let Some(old) = map.insert(*hash, slot) {
            self.erase(&mut inner, old)?;
        }
        Ok(id)
    }

    /// Rewrite an entry's state byte in place; returns its segment.
    fn set_state<'a>(
        &self,
        inner: &'a mut Inner,
        slot: Slot,
        state: u8,
    ) -> Result<&'a mut Segment> {
        let segment = inner
            .segments
            .get_mut(&slot.segment)
            .expect("indexed entries have their segment");
        segment
            .file
            .write_all_at(&[state], slot.offset + 4)
            .map_err(io(&segment_path(&self.dir, slot.segment)))?;
        segment.dirty = true;
        Ok(segment)
    }

    fn erase(&self, inner: &mut Inner, slot: Slot) -> Result<()> {
        let segment = self.set_state(inner, slot, ERASED)?;
        punch(
            &segment.file,
            slot.offset + HEADER_BYTES,
            slot.len as u64,
            &segment_path(&self.dir, slot.segment),
        )?;
        segment.live -= 1;
        Ok(())
    }

    /// Where the stored (or staged) entry of `hash` is.
    pub fn slot(&self, staged: bool, hash: &[u8; 32]) -> Option<Slot> {
        let inner = self.lock();
        if staged {
            inner.staged.get(hash).copied()
        } else {
            inner.stored.get(hash).copied()
        }
    }

    /// The body at `slot` (the caller checks it against its hash).
    pub fn read(&self, slot: Slot) -> Result<Vec<u8>> {
        let file = match self.lock().segments.get(&slot.segment) {
            Some(segment) => segment.file.clone(),
            // Erased and its segment deleted since the slot was looked up: the caller finds
            // the empty body wrong, sees the slot gone, and reports the entry missing.
            None => return Ok(Vec::new()),
        };
        let mut body = vec![0u8; slot.len as usize];
        file.read_exact_at(&mut body, slot.offset + HEADER_BYTES)
            .map_err(io(&segment_path(&self.dir, slot.segment)))?;
        Ok(body)
    }

    /// Erase the entry of `hash`; with `only` set, only if it is still at that slot (a
    /// concurrent rewrite may have moved it).
    pub fn remove(&self, staged: bool, hash: &[u8; 32], only: Option<Slot>) -> Result<bool> {
        let mut inner = self.lock();
        let map = if staged {
            &mut inner.staged
        } else {
            &mut inner.stored
        };
        let Some(slot) = map.get(hash).copied() else {
            return Ok(false);
        };
        if only.is_some_and(|o| o != slot) {
            return Ok(false);
        }
        map.remove(hash);
        self.erase(&mut inner, slot)?;
        Ok(true)
    }

    /// Turn a staged entry into a stored one in place; false if nothing is staged.
    pub fn promote(&self, hash: &[u8; 32]) -> Result<bool> {
        let mut inner = self.lock();
        let Some(slot) = inner.staged.remove(hash) else {
            return Ok(false);
        };
        self.set_state(&mut inner, slot, STORED)?;
        if let Some(old) = inner.stored.insert(*hash, slot) {
            self.erase(&mut inner, old)?;
        }
        Ok(true)
    }

    /// Every staged entry, with when it was staged.
    pub fn staged(&self) -> Vec<([u8; 32], u64)> {
        let inner = self.lock();
        let mut staged: Vec<_> = inner
            .staged
            .iter()
            .map(|(hash, slot)| (*hash, slot.staged_ms))
            .collect();
        staged.sort_unstable();
        staged
    }

    /// Make every write so far durable; segments left without a live entry are deleted.
    pub fn sync(&self) -> Result<()> {
        let ids: Vec<u32> = self.lock().segments.keys().copied().collect();
        self.sync_segments(&ids)
    }

    /// Make the writes to these segments durable.
    pub fn sync_segments(&self, ids: &[u32]) -> Result<()> {
        let _sync = self.sync_lock.lock().expect("pack sync lock");
        let mut files = Vec::new();
        {
            let mut inner = self.lock();
            for id in ids {
                if let Some(segment) = inner.segments.get_mut(id)
                    && segment.dirty
                {
                    segment.dirty = false;
                    files.push((*id, segment.file.clone()));
                }
            }
        }
        for (id, file) in &files {
            if let Err(e) = file.sync_data() {
                // Not durable: mark it again so a later sync retries, and report.
                if let Some(segment) = self.lock().segments.get_mut(id) {
                    segment.dirty = true;
                }
                return Err(Error::Io(
                    segment_path(&self.dir, *id).display().to_string(),
                    e,
                ));
            }
        }
        // Whatever an emptied segment held is erased on disk now; the file itself can go.
        let mut inner = self.lock();
        let active = inner.active;
        let empty: Vec<u32> = inner
            .segments
            .iter()
            .filter(|(id, s)| **id != active && s.live == 0 && !s.dirty)
            .map(|(id, _)| *id)
            .collect();
        for id in empty {
            inner.segments.remove(&id);
            let path = segment_path(&self.dir, id);
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(Error::Io(path.display().to_string(), e));
            }
        }
        Ok(())
    }

    /// Check every live entry's body against the CRC in its header; returns how many were
    /// checked and the hashes of those that failed (a backup's verification).
    pub fn check(&self) -> Result<(usize, Vec<[u8; 32]>)> {
        let slots: Vec<([u8; 32], Slot)> = {
            let inner = self.lock();
            inner
                .stored
                .iter()
                .chain(inner.staged.iter())
                .map(|(hash, slot)| (*hash, *slot))
                .collect()
        };
        let mut damaged = Vec::new();
        for (hash, slot) in &slots {
            let Some(file) = self
                .lock()
                .segments
                .get(&slot.segment)
                .map(|s| s.file.clone())
            else {
                continue;
            };
            let path = segment_path(&self.dir, slot.segment);
            let mut header = [0u8; HEADER_BYTES as usize];
            file.read_exact_at(&mut header, slot.offset)
                .map_err(io(&path))?;
            let mut body = vec![0u8; slot.len as usize];
            file.read_exact_at(&mut body, slot.offset + HEADER_BYTES)
                .map_err(io(&path))?;
            let crc = u32::from_be_bytes(header[49..53].try_into().expect("4 bytes"));
            if &header[5..37] != hash || checksum(hash, slot.staged_ms, &body) != crc {
                damaged.push(*hash);
            }
        }
        Ok((slots.len(), damaged))
    }

    /// Live entries, stored and staged.
    #[cfg(test)]
    pub fn counts(&self) -> (usize, usize, usize) {
        let inner = self.lock();
        (inner.stored.len(), inner.staged.len(), inner.segments.len())
    }
}

/// Read a segment's entry headers into the index. With `check`, also verify every entry's
/// CRC and cut the segment at the first bad one (the torn tail of an interrupted append).
fn scan(
    file: &File,
    id: u32,
    path: &Path,
    check: bool,
    inner: &mut Inner,
    superseded: &mut Vec<Slot>,
) -> Result<Segment> {
    let file_len = file.metadata().map_err(io(path))?.len();
    let mut offset = 0u64;
    let mut live = 0;
    let mut header = [0u8; HEADER_BYTES as usize];
    while offset + HEADER_BYTES <= file_len {
        file.read_exact_at(&mut header, offset).map_err(io(path))?;
        let state = header[4];
        let hash: [u8; 32] = header[5..37].try_into().expect("32");
        let staged_ms = u64::from_be_bytes(header[37..45].try_into().expect("8"));
        let len = u32::from_be_bytes(header[45..49].try_into().expect("4"));
        let crc = u32::from_be_bytes(header[49..53].try_into().expect("4"));
        let end = offset + HEADER_BYTES + len as u64;
        if &header[..4] != MAGIC || state > STORED || len as u64 > ENTRY_BYTES_MAX || end > file_len
        {
            break;
        }
        let slot = Slot {
            segment: id,
            offset,
            len,
            staged_ms,
        };
        if check && state != ERASED {
            let mut body = vec![0u8; len as usize];
            file.read_exact_at(&mut body, offset + HEADER_BYTES)
                .map_err(io(path))?;
            if checksum(&hash, staged_ms, &body) != crc {
                // A damaged entry inside the segment: erased on open, the rest is kept.
                tracing::warn!(segment = %path.display(), at = offset, "erasing a damaged blob pack entry");
                superseded.push(slot);
                live += 1;
                offset = end;
                continue;
            }
        }
        if state != ERASED {
            let map = if state == STAGED {
                &mut inner.staged
            } else {
                &mut inner.stored
            };
            // A later entry for the same hash supersedes an earlier one (a crash between
            // appending the new entry and erasing the old): the old one is erased on open.
            if let Some(old) = map.insert(hash, slot) {
                superseded.push(old);
            }
            live += 1;
        }
        offset = end;
    }
    if offset < file_len {
        if check {
            tracing::warn!(
                segment = %path.display(),
                kept = offset,
                dropped = file_len - offset,
                "cutting a torn tail from the blob pack"
            );
            file.set_len(offset).map_err(io(path))?;
        } else {
            tracing::error!(
                segment = %path.display(),
                at = offset,
                "a closed blob pack segment is damaged; its remaining entries will be fetched again"
            );
        }
    }
    Ok(Segment {
        file: Arc::new(file.try_clone().map_err(io(path))?),
        len: offset,
        live,
        dirty: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_finds_a_damaged_body() {
        let dir = tempfile::tempdir().unwrap();
        let pack = Pack::open(dir.path()).unwrap();
        pack.append(false, &[1; 32], 0, b"one").unwrap();
        pack.append(true, &[2; 32], 7, b"two").unwrap();
        pack.sync().unwrap();
        assert_eq!(pack.check().unwrap(), (2, vec![]));
        // A flipped bit in the first body, behind the open pack's back.
        let slot = pack.slot(false, &[1; 32]).unwrap();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(segment_path(dir.path(), 1))
            .unwrap();
        file.write_all_at(b"X", slot.offset + HEADER_BYTES).unwrap();
        assert_eq!(pack.check().unwrap(), (2, vec![[1; 32]]));
    }

    #[test]
    fn entries_survive_reopening_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let pack = Pack::open(dir.path()).unwrap();
        pack.append(false, &[1; 32], 0, b"one").unwrap();
        pack.append(true, &[2; 32], 7, b"two").unwrap();
        pack.append(false, &[3; 32], 0, b"three").unwrap();
        assert!(pack.remove(false, &[3; 32], None).unwrap());
        pack.sync().unwrap();
        drop(pack);
        // A crash in the middle of an append leaves half an entry.
        let path = segment_path(dir.path(), 1);
        let good = std::fs::metadata(&path).unwrap().len();
        let mut torn = encode_entry(STORED, &[4; 32], 0, b"four");
        torn.truncate(torn.len() - 2);
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all_at(&torn, good).unwrap();
        drop(file);

        let pack = Pack::open(dir.path()).unwrap();
        assert_eq!(pack.counts(), (1, 1, 1));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good);
        let slot = pack.slot(false, &[1; 32]).unwrap();
        assert_eq!(pack.read(slot).unwrap(), b"one");
        assert_eq!(pack.slot(true, &[2; 32]).unwrap().staged_ms, 7);
        assert!(pack.slot(false, &[3; 32]).is_none());
        assert!(pack.slot(false, &[4; 32]).is_none());
    }

    #[test]
    fn erased_bytes_leave_the_disk_and_empty_segments_go() {
        let dir = tempfile::tempdir().unwrap();
        let pack = Pack::open(dir.path()).unwrap();
        let secret = b"a ciphertext that must leave the disk".repeat(200);
        pack.append(false, &[9; 32], 0, &secret).unwrap();
        pack.sync().unwrap();
        let bytes = std::fs::read(segment_path(dir.path(), 1)).unwrap();
        assert!(bytes.windows(37).any(|w| w == &secret[..37]));
        assert!(pack.remove(false, &[9; 32], None).unwrap());
        pack.sync().unwrap();
        let bytes = std::fs::read(segment_path(dir.path(), 1)).unwrap();
        assert!(!bytes.windows(37).any(|w| w == &secret[..37]));

        // Promotion flips the entry in place; a closed segment with nothing live is deleted.
        pack.append(true, &[5; 32], 1, b"staged").unwrap();
        assert!(pack.promote(&[5; 32]).unwrap());
        assert!(pack.slot(true, &[5; 32]).is_none());
        {
            let mut inner = pack.lock();
            inner.active = 2;
            inner.segments.insert(
                2,
                Segment {
                    file: Arc::new(open_segment(&segment_path(dir.path(), 2)).unwrap()),
                    len: 0,
                    live: 0,
                    dirty: true,
                },
            );
        }
        assert!(pack.remove(false, &[5; 32], None).unwrap());
        pack.sync().unwrap();
        assert!(!segment_path(dir.path(), 1).exists());
        assert!(segment_path(dir.path(), 2).exists());
        drop(pack);
        let pack = Pack::open(dir.path()).unwrap();
        assert_eq!(pack.counts(), (0, 0, 1));
    }

    #[test]
    fn a_damaged_entry_is_dropped_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let pack = Pack::open(dir.path()).unwrap();
        for (i, body) in [b"alpha", b"bravo", b"delta"].iter().enumerate() {
            pack.append(false, &[i as u8; 32], 0, *body).unwrap();
        }
        pack.sync().unwrap();
        drop(pack);
        let path = segment_path(dir.path(), 1);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.windows(5).position(|w| w == b"bravo").unwrap();
        bytes[at] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let pack = Pack::open(dir.path()).unwrap();
        assert_eq!(pack.counts(), (2, 0, 1));
        assert!(pack.slot(false, &[1; 32]).is_none());
        let last = pack.slot(false, &[2; 32]).unwrap();
        assert_eq!(pack.read(last).unwrap(), b"delta");
    }

    #[test]
    fn a_rewrite_replaces_the_old_entry() {
        let dir = tempfile::tempdir().unwrap();
        let pack = Pack::open(dir.path()).unwrap();
        pack.append(false, &[1; 32], 0, b"first").unwrap();
        let old = pack.slot(false, &[1; 32]).unwrap();
        pack.append(false, &[1; 32], 0, b"second").unwrap();
        assert!(
            !pack.remove(false, &[1; 32], Some(old)).unwrap(),
            "a stale slot does not erase the new entry"
        );
        let slot = pack.slot(false, &[1; 32]).unwrap();
        assert_eq!(pack.read(slot).unwrap(), b"second");
        pack.sync().unwrap();
        drop(pack);
        let pack = Pack::open(dir.path()).unwrap();
        assert_eq!(pack.counts(), (1, 0, 1));
        let slot = pack.slot(false, &[1; 32]).unwrap();
        assert_eq!(pack.read(slot).unwrap(), b"second");
    }
}
