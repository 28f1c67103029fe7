//! The block log: every finalized block with its finalization, appended in height order.
//!
//! ```text
//! record: magic "EHRB" [4] | height u64 | block_len u32 | block [block_len]
//!         | finalization_len u32 | finalization [finalization_len]
//! ```
//! A record is synced before the block is acknowledged to the consensus engine, so an
//! acknowledged block is never lost. On start-up a torn record at the tail (a crash during an
//! append) is cut off; anything else that does not parse stops the node. `ehrchain verify`
//! reads the same log and checks every hash link and signature.

use commonware_runtime::{Blob, ReadOptions, Storage, WriteOptions};
use ehrchain_types::limits::BLOCK_SIZE_BYTES_MAX;
use std::sync::Arc;

/// Partition of the block log in a node's storage directory (its prefix is "ehrchain").
pub fn partition(prefix: &str) -> String {
    format!("{prefix}-blocks")
}
const NAME: &[u8] = b"log";
const MAGIC: [u8; 4] = *b"EHRB";
const RECORD_HEADER_BYTES: usize = 4 + 8 + 4;

/// Largest finalization certificate a record may carry.
pub const FINALIZATION_SIZE_BYTES_MAX: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("storage error: {0}; the node stops, check the disk and restart")]
    Storage(#[from] commonware_runtime::Error),
    #[error("malformed record at height {height} (offset {offset}): {reason}")]
    Malformed {
        height: u64,
        offset: u64,
        reason: &'static str,
    },
    #[error("height {0} is not in the log")]
    Missing(u64),
}

/// One stored record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub height: u64,
    pub block: Vec<u8>,
    pub finalization: Vec<u8>,
}

/// The bytes of one record (the layout at the top of this module).
pub fn encode_record(height: u64, block: &[u8], finalization: &[u8]) -> Vec<u8> {
    assert!(block.len() <= BLOCK_SIZE_BYTES_MAX);
    assert!(finalization.len() <= FINALIZATION_SIZE_BYTES_MAX);
    let mut bytes = Vec::with_capacity(RECORD_HEADER_BYTES + block.len() + 4 + finalization.len());
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&height.to_be_bytes());
    bytes.extend_from_slice(&(block.len() as u32).to_be_bytes());
    bytes.extend_from_slice(block);
    bytes.extend_from_slice(&(finalization.len() as u32).to_be_bytes());
    bytes.extend_from_slice(finalization);
    bytes
}

/// An append-only block log over one runtime blob.
pub struct BlockLog<B: Blob> {
    blob: Arc<B>,
    /// Offset and record length of each height, starting from height 0.
    index: Vec<(u64, u64)>,
    end: u64,
}

/// Parse the record at `offset`. `Ok(None)` means the blob ends (cleanly or torn) here.
async fn read_record<B: Blob>(
    blob: &B,
    size: u64,
    offset: u64,
    expected_height: u64,
) -> Result<Option<(Record, u64)>, Error> {
    let malformed = |reason| Error::Malformed {
        height: expected_height,
        offset,
        reason,
    };
    if offset + RECORD_HEADER_BYTES as u64 > size {
        return Ok(None);
    }
    let header = read_bytes(blob, offset, RECORD_HEADER_BYTES).await?;
    if header[..4] != MAGIC {
        return Err(malformed("bad magic"));
    }
    let height = u64::from_be_bytes(header[4..12].try_into().expect("8 bytes"));
    if height != expected_height {
        return Err(malformed("unexpected height"));
    }
    let block_len = u32::from_be_bytes(header[12..16].try_into().expect("4 bytes")) as usize;
    if block_len > BLOCK_SIZE_BYTES_MAX {
        return Err(malformed("block length over limit"));
    }
    let block_at = offset + RECORD_HEADER_BYTES as u64;
    if block_at + block_len as u64 + 4 > size {
        return Ok(None);
    }
    let block = read_bytes(blob, block_at, block_len).await?;
    let finalization_at = block_at + block_len as u64;
    let len_bytes = read_bytes(blob, finalization_at, 4).await?;
    let finalization_len = u32::from_be_bytes(len_bytes[..].try_into().expect("4 bytes")) as usize;
    if finalization_len > FINALIZATION_SIZE_BYTES_MAX {
        return Err(malformed("finalization length over limit"));
    }
    if finalization_at + 4 + finalization_len as u64 > size {
        return Ok(None);
    }
    let finalization = read_bytes(blob, finalization_at + 4, finalization_len).await?;
    let length = RECORD_HEADER_BYTES as u64 + block_len as u64 + 4 + finalization_len as u64;
    Ok(Some((
        Record {
            height,
            block,
            finalization,
        },
        length,
    )))
}

async fn read_bytes<B: Blob>(blob: &B, offset: u64, len: usize) -> Result<Vec<u8>, Error> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let bufs = blob.read_at(offset, len, ReadOptions::default()).await?;
    Ok(bufs.coalesce().as_ref().to_vec())
}

impl<B: Blob> BlockLog<B> {
    /// Open the log, index it, and cut off a torn tail. Returns the log and every record, so
    /// the caller can rebuild its state.
    pub async fn open<S: Storage<Blob = B>>(
        storage: &S,
        prefix: &str,
    ) -> Result<(Self, Vec<Record>), Error> {
        let (blob, size) = storage.open(&partition(prefix), NAME).await?;
        let mut index = Vec::new();
        let mut records = Vec::new();
        let mut offset = 0u64;
        while let Some((record, length)) =
            read_record(&blob, size, offset, index.len() as u64).await?
        {
            index.push((offset, length));
            records.push(record);
            offset += length;
        }
        if offset < size {
            // A crash during an append left a partial record that was never acknowledged.
            tracing::warn!(offset, size, "cutting a torn record off the block log");
            blob.resize(offset).await?;
            blob.sync().await?;
        }
        Ok((
            Self {
                blob: Arc::new(blob),
                index,
                end: offset,
            },
            records,
        ))
    }

    /// Scan a log without repairing it, for `ehrchain verify`: every record in order, and the
    /// first error if the log does not parse to its end.
    pub async fn scan<S: Storage<Blob = B>>(
        storage: &S,
        prefix: &str,
        mut visit: impl FnMut(Record),
    ) -> Result<u64, Error> {
        let (blob, size) = storage.open(&partition(prefix), NAME).await?;
        let mut offset = 0u64;
        let mut height = 0u64;
        while let Some((record, length)) = read_record(&blob, size, offset, height).await? {
            visit(record);
            offset += length;
            height += 1;
        }
        if offset < size {
            return Err(Error::Malformed {
                height,
                offset,
                reason: "truncated record",
            });
        }
        Ok(height)
    }

    /// Number of records (the next height to append).
    pub fn len(&self) -> u64 {
        self.index.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Append and sync one record. Heights must be consecutive.
    pub async fn append(
        &mut self,
        height: u64,
        block: &[u8],
        finalization: &[u8],
    ) -> Result<(), Error> {
        assert_eq!(height, self.len(), "block log heights must be consecutive");
        let bytes = encode_record(height, block, finalization);
        let length = bytes.len() as u64;
        self.blob
            .write_at(self.end, bytes, WriteOptions::default())
            .await?;
        self.blob.sync().await?;
        self.index.push((self.end, length));
        self.end += length;
        Ok(())
    }

    /// Offset and length of `height`, for readers that keep their own index copy.
    pub fn location(&self, height: u64) -> Option<(u64, u64)> {
        self.index.get(height as usize).copied()
    }

    pub fn blob(&self) -> Arc<B> {
        self.blob.clone()
    }
}

/// Read the record at a known location.
pub async fn read_at<B: Blob>(
    blob: &B,
    height: u64,
    location: (u64, u64),
) -> Result<Record, Error> {
    let (offset, length) = location;
    let (record, read_length) = read_record(blob, offset + length, offset, height)
        .await?
        .ok_or(Error::Missing(height))?;
    assert_eq!(read_length, length);
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use commonware_runtime::{Runner, deterministic};

    #[test]
    fn append_reopen_and_torn_tail() {
        deterministic::Runner::default().start(|context| async move {
            {
                let (mut log, records) = BlockLog::open(&context, "test").await.unwrap();
                assert!(records.is_empty());
                log.append(0, b"genesis", b"").await.unwrap();
                log.append(1, b"one", b"cert").await.unwrap();
                let record = read_at(&*log.blob(), 1, log.location(1).unwrap()).await;
                assert_eq!(record.unwrap().block, b"one");
                // Simulate a torn append: half a record at the tail.
                let blob = log.blob();
                blob.write_at(log.end, vec![b'E', b'H'], WriteOptions::default())
                    .await
                    .unwrap();
                blob.sync().await.unwrap();
            }
            let (log, records) = BlockLog::open(&context, "test").await.unwrap();
            assert_eq!(log.len(), 2);
            assert_eq!(records[1].finalization, b"cert");
            drop(log);
            let mut seen = 0;
            let height = BlockLog::scan(&context, "test", |_| seen += 1)
                .await
                .unwrap();
            assert_eq!((height, seen), (2, 2));
        });
    }
}
