//! Blocks: a fixed-size header that is hashed, followed by the transactions.
//!
//! ```text
//! header (157 bytes): version u8 | chain_id u64 | height u64 | parent [32] | timestamp_ms u64
//!                     | proposer [32] | tx_root [32] | state_root [32] | tx_count u32
//! body:               tx_count x ( len u32 | transaction [len] )
//! ```
//! The block digest is SHA-256 of the header. The header commits to the transactions through
//! `tx_root`, the Merkle root over their ids, so a header alone (with a finalization) is enough
//! to check an inclusion proof offline.

use crate::{
    Digest, Error, PublicKey, Reader, Transaction,
    limits::{BLOCK_SIZE_BYTES_MAX, BLOCK_TRANSACTIONS_MAX, TRANSACTION_SIZE_BYTES_MAX},
    merkle, sha256,
};
use bytes::BufMut;
use commonware_codec::Buf;
use commonware_codec::{EncodeSize, Error as CodecError, Read, Write};
use commonware_consensus::{Heightable, types::Height};
use commonware_cryptography::Digestible;

/// Version byte of the block format this build writes and reads.
pub const BLOCK_VERSION: u8 = 1;

/// Size of the encoded header.
pub const HEADER_SIZE_BYTES: usize = 1 + 8 + 8 + 32 + 8 + 32 + 32 + 32 + 4;

/// The hashed part of a block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockHeader {
    pub chain_id: u64,
    pub height: u64,
    pub parent: Digest,
    pub timestamp_ms: u64,
    pub proposer: PublicKey,
    pub tx_root: Digest,
    pub state_root: Digest,
    pub tx_count: u32,
}

impl BlockHeader {
    pub fn encode(&self) -> [u8; HEADER_SIZE_BYTES] {
        let mut out = [0u8; HEADER_SIZE_BYTES];
        let mut cursor = &mut out[..];
        cursor.put_u8(BLOCK_VERSION);
        cursor.put_u64(self.chain_id);
        cursor.put_u64(self.height);
        cursor.put_slice(self.parent.as_ref());
        cursor.put_u64(self.timestamp_ms);
        cursor.put_slice(self.proposer.as_ref());
        cursor.put_slice(self.tx_root.as_ref());
        cursor.put_slice(self.state_root.as_ref());
        cursor.put_u32(self.tx_count);
        assert!(cursor.is_empty());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let mut reader = Reader::new(bytes);
        let header = Self::read(&mut reader)?;
        reader.finish()?;
        Ok(header)
    }

    fn read(reader: &mut Reader<'_>) -> Result<Self, Error> {
        let version = reader.u8()?;
        if version != BLOCK_VERSION {
            return Err(Error::UnsupportedVersion(version, BLOCK_VERSION));
        }
        Ok(Self {
            chain_id: reader.u64()?,
            height: reader.u64()?,
            parent: reader.digest()?,
            timestamp_ms: reader.u64()?,
            proposer: reader.public_key()?,
            tx_root: reader.digest()?,
            state_root: reader.digest()?,
            tx_count: reader.u32()?,
        })
    }

    /// The block digest.
    pub fn digest(&self) -> Digest {
        sha256(&[&self.encode()])
    }
}

/// A block: header, transactions and the cached digest of the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    pub header: BlockHeader,
    pub transactions: Vec<Transaction>,
    digest: Digest,
}

impl Block {
    /// Assemble a block; computes the transaction root and the digest.
    pub fn new(
        chain_id: u64,
        height: u64,
        parent: Digest,
        timestamp_ms: u64,
        proposer: PublicKey,
        state_root: Digest,
        transactions: Vec<Transaction>,
    ) -> Self {
        assert!(transactions.len() <= BLOCK_TRANSACTIONS_MAX);
        let header = BlockHeader {
            chain_id,
            height,
            parent,
            timestamp_ms,
            proposer,
            tx_root: transaction_root(&transactions),
            state_root,
            tx_count: transactions.len() as u32,
        };
        let digest = header.digest();
        Self {
            header,
            transactions,
            digest,
        }
    }

    /// Decode a block from untrusted bytes, enforcing every size limit first. Transaction
    /// signatures are not checked here; the transaction root is.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() > BLOCK_SIZE_BYTES_MAX {
            return Err(Error::BlockTooLarge(bytes.len(), BLOCK_SIZE_BYTES_MAX));
        }
        let mut reader = Reader::new(bytes);
        let block = Self::read_from(&mut reader)?;
        reader.finish()?;
        Ok(block)
    }

    fn read_from(reader: &mut Reader<'_>) -> Result<Self, Error> {
        let header = BlockHeader::read(reader)?;
        let count = header.tx_count as usize;
        if count > BLOCK_TRANSACTIONS_MAX {
            return Err(Error::TooManyTransactions(count, BLOCK_TRANSACTIONS_MAX));
        }
        let mut transactions = Vec::with_capacity(count);
        for _ in 0..count {
            let len = reader.u32()? as usize;
            if len > TRANSACTION_SIZE_BYTES_MAX {
                return Err(Error::TransactionTooLarge(len, TRANSACTION_SIZE_BYTES_MAX));
            }
            transactions.push(Transaction::decode(reader.take(len)?)?);
        }
        if transaction_root(&transactions) != header.tx_root {
            return Err(Error::TransactionRootMismatch);
        }
        let digest = header.digest();
        Ok(Self {
            header,
            transactions,
            digest,
        })
    }

    /// Canonical bytes of the whole block.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.write_to(&mut out);
        out
    }

    fn write_to(&self, out: &mut impl BufMut) {
        out.put_slice(&self.header.encode());
        for tx in &self.transactions {
            out.put_u32(tx.bytes().len() as u32);
            out.put_slice(tx.bytes());
        }
    }

    fn encoded_len(&self) -> usize {
        HEADER_SIZE_BYTES
            + self
                .transactions
                .iter()
                .map(|tx| 4 + tx.bytes().len())
                .sum::<usize>()
    }

    pub const fn height(&self) -> u64 {
        self.header.height
    }

    pub const fn digest(&self) -> Digest {
        self.digest
    }

    /// Ids of the transactions, in block order.
    pub fn transaction_ids(&self) -> Vec<Digest> {
        self.transactions.iter().map(Transaction::id).collect()
    }
}

/// Merkle root over the ids of `transactions`.
pub fn transaction_root(transactions: &[Transaction]) -> Digest {
    let ids: Vec<Digest> = transactions.iter().map(Transaction::id).collect();
    merkle::root(&ids)
}

impl Digestible for Block {
    type Digest = Digest;

    fn digest(&self) -> Digest {
        self.digest
    }
}

impl Heightable for Block {
    fn height(&self) -> Height {
        Height::new(self.header.height)
    }
}

impl commonware_consensus::Block for Block {
    fn parent(&self) -> Digest {
        self.header.parent
    }
}

impl Write for Block {
    fn write(&self, buf: &mut impl BufMut) {
        // Length-prefixed so that a reader can bound the block before parsing it.
        buf.put_u32(self.encoded_len() as u32);
        self.write_to(buf);
    }
}

impl EncodeSize for Block {
    fn encode_size(&self) -> usize {
        4 + self.encoded_len()
    }
}

impl Read for Block {
    type Cfg = ();

    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        if buf.remaining() < 4 {
            return Err(CodecError::EndOfBuffer);
        }
        let len = buf.get_u32() as usize;
        if len > BLOCK_SIZE_BYTES_MAX {
            return Err(CodecError::Invalid("Block", "too large"));
        }
        if buf.remaining() < len {
            return Err(CodecError::EndOfBuffer);
        }
        let mut bytes = vec![0u8; len];
        buf.copy_to_slice(&mut bytes);
        Self::decode(&bytes).map_err(|_| CodecError::Invalid("Block", "malformed"))
    }
}

impl commonware_consensus::BoundedBlock for Block {
    fn max_encode_size(_: &()) -> usize {
        4 + BLOCK_SIZE_BYTES_MAX
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Payload, PrivateKey, TransactionBody};
    use commonware_cryptography::Signer;

    fn block(count: usize) -> Block {
        let key = PrivateKey::from_seed(3);
        let txs = (0..count as u64)
            .map(|nonce| {
                TransactionBody {
                    chain_id: 1,
                    signer: key.public_key(),
                    nonce,
                    payload: Payload::Anchor {
                        label: 0,
                        digest: sha256(&[&nonce.to_be_bytes()]),
                    },
                }
                .sign(&key)
            })
            .collect();
        Block::new(
            1,
            9,
            sha256(&[b"p"]),
            1_000,
            key.public_key(),
            sha256(&[b"s"]),
            txs,
        )
    }

    #[test]
    fn round_trip() {
        for count in [0, 1, 5] {
            let block = block(count);
            let decoded = Block::decode(&block.encode()).unwrap();
            assert_eq!(decoded, block);
            assert_eq!(decoded.digest(), block.header.digest());
        }
    }

    #[test]
    fn tampering_is_detected() {
        let block = block(3);
        let bytes = block.encode();
        // A flipped byte in a transaction breaks the transaction root (or its framing).
        let mut tampered = bytes.clone();
        let position = HEADER_SIZE_BYTES + 4 + 20;
        tampered[position] ^= 0x40;
        match Block::decode(&tampered) {
            Err(_) => {}
            Ok(decoded) => assert_ne!(decoded.digest(), block.digest()),
        }
        // A flipped byte in the header changes the digest.
        let mut header = bytes;
        header[20] ^= 1;
        if let Ok(decoded) = Block::decode(&header) {
            assert_ne!(decoded.digest(), block.digest());
        }
    }

    #[test]
    fn limits_are_enforced() {
        let block = block(1);
        let mut bytes = block.encode();
        // Claim more transactions than allowed.
        bytes[HEADER_SIZE_BYTES - 4..HEADER_SIZE_BYTES]
            .copy_from_slice(&(BLOCK_TRANSACTIONS_MAX as u32 + 1).to_be_bytes());
        assert!(matches!(
            Block::decode(&bytes),
            Err(Error::TooManyTransactions(_, _))
        ));
        assert!(matches!(
            Block::decode(&vec![0u8; BLOCK_SIZE_BYTES_MAX + 1]),
            Err(Error::BlockTooLarge(_, _))
        ));
    }
}
