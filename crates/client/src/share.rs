//! Consent shares: when a patient (or guardian) grants access, their client re-wraps the data
//! key of each covered record version for the grantee. The node never sees a data key.

use crate::{Error, Signer};
use ehrchain_crypto::{Binding, EncryptionPublicKey, Share, Wrap};

/// One version to share: where it is, its anchored envelope hash, and the owner's wrap of it.
pub struct Version {
    pub record: [u8; 16],
    pub version: u32,
    pub hash: [u8; 32],
    pub wrap: Wrap,
}

/// Unwrap each version's data key with `owner`'s key and wrap it for `grantee`.
pub fn build(
    owner: &Signer,
    patient: &[u8; 16],
    versions: &[Version],
    grantee: &EncryptionPublicKey,
) -> Result<Share, Error> {
    let mut share = Share::default();
    for v in versions {
        let binding = Binding {
            record: v.record,
            version: v.version,
            patient: *patient,
        };
        let key = ehrchain_crypto::unwrap(&v.wrap, &owner.encryption, &binding, &v.hash)?;
        share.entries.push((
            v.hash,
            ehrchain_crypto::wrap(&key, grantee, &binding, &v.hash)?,
        ));
    }
    Ok(share)
}
