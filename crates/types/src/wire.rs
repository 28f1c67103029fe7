//! Wire bodies that clients build and nodes decode: the record upload (a signed anchor, its
//! first wraps and the envelope in one body) and the consent grant (a signed grant and its
//! share bundle). Decoders take limits.
//!
//! Upload: `tx_len u32 BE | transaction | wrap_count u16 BE | wraps (WRAP_BYTES each) |
//! envelope`. Consent: `tx_len u32 BE | transaction | share bundle` (`crypto::Share`).

use crate::limits::TRANSACTION_SIZE_BYTES_MAX;
use ehrchain_crypto::{ENVELOPE_SIZE_BYTES_MAX, WRAP_BYTES, Wrap};

/// Most wraps one upload carries (its first readers).
pub const UPLOAD_WRAPS_MAX: usize = 64;

/// Largest upload body.
pub const UPLOAD_BYTES_MAX: usize =
    4 + TRANSACTION_SIZE_BYTES_MAX + 2 + UPLOAD_WRAPS_MAX * WRAP_BYTES + ENVELOPE_SIZE_BYTES_MAX;

/// A decoded upload.
#[derive(Debug)]
pub struct Upload {
    pub transaction: Vec<u8>,
    pub wraps: Vec<Wrap>,
    pub envelope: Vec<u8>,
}

impl Upload {
    pub fn encode(transaction: &[u8], wraps: &[Wrap], envelope: &[u8]) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(6 + transaction.len() + wraps.len() * WRAP_BYTES + envelope.len());
        out.extend_from_slice(&(transaction.len() as u32).to_be_bytes());
        out.extend_from_slice(transaction);
        out.extend_from_slice(&(wraps.len() as u16).to_be_bytes());
        for wrap in wraps {
            out.extend_from_slice(&wrap.encode());
        }
        out.extend_from_slice(envelope);
        out
    }

    /// Decode an upload from untrusted bytes, with limits.
    pub fn decode(bytes: &[u8]) -> std::result::Result<Self, &'static str> {
        if bytes.len() > UPLOAD_BYTES_MAX {
            return Err("upload too large");
        }
        let tx_len = u32::from_be_bytes(
            bytes
                .get(..4)
                .ok_or("truncated upload")?
                .try_into()
                .expect("4"),
        ) as usize;
        if tx_len > TRANSACTION_SIZE_BYTES_MAX {
            return Err("transaction too large");
        }
        let transaction = bytes.get(4..4 + tx_len).ok_or("truncated upload")?.to_vec();
        let rest = &bytes[4 + tx_len..];
        let count = u16::from_be_bytes(
            rest.get(..2)
                .ok_or("truncated upload")?
                .try_into()
                .expect("2"),
        ) as usize;
        if count == 0 || count > UPLOAD_WRAPS_MAX {
            return Err("an upload carries between 1 and 64 wrapped keys");
        }
        let wraps_end = 2 + count * WRAP_BYTES;
        let wraps = rest
            .get(2..wraps_end)
            .ok_or("truncated upload")?
            .chunks(WRAP_BYTES)
            .map(|c| Wrap::decode(c).map_err(|_| "malformed wrapped key"))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let envelope = rest[wraps_end..].to_vec();
        if envelope.is_empty() {
            return Err("the upload has no envelope");
        }
        Ok(Self {
            transaction,
            wraps,
            envelope,
        })
    }
}

/// Largest consent body (`POST /consents`): a grant transaction and its share bundle.
pub const CONSENT_BYTES_MAX: usize = 4 + TRANSACTION_SIZE_BYTES_MAX + ENVELOPE_SIZE_BYTES_MAX;

/// Split a consent body into its transaction and share bundle, with limits.
pub fn decode_consent(bytes: &[u8]) -> std::result::Result<(&[u8], &[u8]), &'static str> {
    if bytes.len() > CONSENT_BYTES_MAX {
        return Err("consent body too large");
    }
    let len = u32::from_be_bytes(
        bytes
            .get(..4)
            .ok_or("truncated consent body")?
            .try_into()
            .expect("4"),
    ) as usize;
    if len > TRANSACTION_SIZE_BYTES_MAX {
        return Err("transaction too large");
    }
    let tx = bytes.get(4..4 + len).ok_or("truncated consent body")?;
    Ok((tx, &bytes[4 + len..]))
}

/// A consent body: the signed grant transaction, then its share bundle.
pub fn encode_consent(transaction: &[u8], share: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + transaction.len() + share.len());
    out.extend_from_slice(&(transaction.len() as u32).to_be_bytes());
    out.extend_from_slice(transaction);
    out.extend_from_slice(share);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consent_bodies_split_and_garbage_is_refused() {
        let body = encode_consent(&[1; 100], &[2; 30]);
        assert_eq!(
            decode_consent(&body).unwrap(),
            (&[1u8; 100][..], &[2u8; 30][..])
        );
        for cut in 0..104 {
            assert!(decode_consent(&body[..cut]).is_err());
        }
        assert!(decode_consent(&encode_consent(&[1; 5000], &[])).is_err());
    }

    #[test]
    fn uploads_round_trip_and_garbage_is_refused() {
        let wrap = Wrap::decode(&[3; WRAP_BYTES]).unwrap();
        let bytes = Upload::encode(&[1; 200], std::slice::from_ref(&wrap), &[9; 50]);
        let upload = Upload::decode(&bytes).unwrap();
        assert_eq!(upload.transaction, vec![1; 200]);
        assert_eq!(upload.wraps, vec![wrap.clone()]);
        assert_eq!(upload.envelope, vec![9; 50]);
        for cut in 0..(4 + 200 + 2 + WRAP_BYTES + 1) {
            assert!(Upload::decode(&bytes[..cut]).is_err(), "cut {cut}");
        }
        assert!(Upload::decode(&Upload::encode(&[1; 10], &[], &[1])).is_err());
        assert!(Upload::decode(&Upload::encode(&[1; 5000], &[wrap], &[1])).is_err());
    }
}
