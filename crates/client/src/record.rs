//! Record versions on the client: validate, seal, wrap and sign one (`prepare`), and open one
//! that was read (`open`), checking it against its on-chain anchor.

use crate::{Error, Signer};
use ehrchain_crypto::{Binding, EncryptionPublicKey, Wrap};
use ehrchain_types::{Payload, RecordAnchor, Transaction, wire::Upload};

/// A FHIR resource that passed validation, with the patient it belongs to.
pub struct Checked<'a> {
    pub json: &'a [u8],
    pub resource_type: ehrchain_fhir::ResourceType,
    pub patient: [u8; 16],
}

/// Validate a FHIR resource; an invalid one is refused with its OperationOutcome.
pub fn check(json: &[u8]) -> Result<Checked<'_>, Error> {
    let resource = ehrchain_fhir::validate(json).map_err(|issues| {
        Error::Invalid(format!(
            "the resource is not valid FHIR R4:\n{}",
            serde_json::to_string_pretty(&ehrchain_fhir::operation_outcome(&issues))
                .unwrap_or_default()
        ))
    })?;
    let patient = resource
        .patient
        .as_deref()
        .ok_or_else(|| Error::Invalid("the resource names no patient".into()))?;
    let patient = ehrchain_types::id_from_hex(patient).ok_or_else(|| {
        Error::Invalid("the patient id in the resource must be 32 hex characters".into())
    })?;
    Ok(Checked {
        json,
        resource_type: resource.resource_type,
        patient,
    })
}

/// Everything needed to write one record version, computed on the client.
pub struct Prepared {
    /// The body of `POST /records`.
    pub upload: Vec<u8>,
    pub record: [u8; 16],
    pub version: u32,
    pub transaction: Transaction,
}

/// Where a new version goes and what it is signed with.
pub struct Write {
    pub chain_id: u64,
    pub nonce: u64,
    /// The record; `None` for a new one (a Patient's record id is the patient id).
    pub record: Option<[u8; 16]>,
    pub version: u32,
    /// The author's clock, milliseconds since the Unix epoch (the anchor's timestamp).
    pub timestamp_ms: u64,
}

/// Seal, wrap and sign one checked record version. `readers` are the X25519 keys to wrap for:
/// those the chain names (`GET /patients/{id}/readers`, `access::version_readers`).
pub fn prepare(
    author: &Signer,
    checked: &Checked<'_>,
    write: &Write,
    readers: &[EncryptionPublicKey],
) -> Result<Prepared, Error> {
    let Checked {
        json,
        resource_type,
        patient,
    } = *checked;
    let record = match (write.record, resource_type) {
        (Some(record), _) => record,
        (None, ehrchain_fhir::ResourceType::Patient) => patient,
        (None, _) => crate::random16()?,
    };
    let binding = Binding {
        record,
        version: write.version,
        patient,
    };
    let (envelope, hash, wraps) = ehrchain_crypto::seal_for(&binding, json, readers)?;
    let transaction = author.sign(
        write.chain_id,
        write.nonce,
        Payload::RecordAnchor(RecordAnchor {
            record,
            version: write.version,
            patient,
            resource_type: resource_type.code(),
            ciphertext_hash: ehrchain_types::Digest::from(hash),
            ciphertext_size: envelope.len() as u64,
            timestamp_ms: write.timestamp_ms,
        }),
    );
    let upload = Upload::encode(transaction.bytes(), &wraps, &envelope);
    Ok(Prepared {
        upload,
        record,
        version: write.version,
        transaction,
    })
}

/// Open a version read from a node: the envelope must hash to the anchored
/// `ciphertext_hash` (so a node cannot hand back other bytes), and the wrap must open with the
/// reader's key for exactly this record version.
pub fn open(
    reader: &Signer,
    binding: &Binding,
    anchored_hash: &[u8; 32],
    envelope: &[u8],
    wrap: &Wrap,
) -> Result<Vec<u8>, Error> {
    if &ehrchain_crypto::envelope_hash(envelope) != anchored_hash {
        return Err(Error::Protocol(
            "the envelope does not match its on-chain anchor".into(),
        ));
    }
    let key = ehrchain_crypto::unwrap(wrap, &reader.encryption, binding, anchored_hash)?;
    Ok(ehrchain_crypto::open(&key, binding, envelope)?)
}

/// Open one entry of a sealed page (`GET /ui/sealed`, JSON) with the patient's own key: check
/// the envelope against its hash and open it ([`open`]), and answer the FHIR resource as a
/// FHIR server would serve it (the server's `id` and `meta.versionId`/`lastUpdated`).
pub fn open_sealed(reader: &Signer, entry: &serde_json::Value) -> Result<String, Error> {
    use base64::Engine as _;
    let bad = |what: &str| Error::Protocol(format!("a sealed record has no valid {what}"));
    let text = |name: &str| entry[name].as_str().ok_or_else(|| bad(name));
    let bytes = |name: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(text(name)?)
            .map_err(|_| bad(name))
    };
    let id16 = |name: &str| ehrchain_types::id_from_hex(text(name)?).ok_or_else(|| bad(name));
    let record = id16("record")?;
    let version = entry["version"]
        .as_u64()
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| bad("version"))?;
    let hash: [u8; 32] = hex::decode(text("ciphertext_hash")?)
        .ok()
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| bad("ciphertext_hash"))?;
    let binding = Binding {
        record,
        version,
        patient: id16("patient")?,
    };
    let wrap = Wrap::decode(&bytes("wrap")?).map_err(|_| bad("wrap"))?;
    let plain = open(reader, &binding, &hash, &bytes("envelope")?, &wrap)?;
    ehrchain_fhir::raw::present(
        &plain,
        &hex::encode(record),
        &version.to_string(),
        text("last_updated")?,
    )
    .ok_or_else(|| Error::Protocol("a stored record is not a JSON object".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prepared_version_opens_for_its_readers_only_and_only_as_anchored() {
        let author = Signer::from_seed(&[1; 32]);
        let patient = Signer::from_seed(&[2; 32]);
        let stranger = Signer::from_seed(&[3; 32]);
        let id = hex::encode([7u8; 16]);
        let json = format!(
            r#"{{"resourceType":"Observation","status":"final","code":{{"text":"x"}},"subject":{{"reference":"Patient/{id}"}}}}"#
        );
        let checked = check(json.as_bytes()).unwrap();
        let write = Write {
            chain_id: 1,
            nonce: 0,
            record: None,
            version: 1,
            timestamp_ms: 5,
        };
        let readers = [author.encryption.public(), patient.encryption.public()];
        let prepared = prepare(&author, &checked, &write, &readers).unwrap();
        let upload = Upload::decode(&prepared.upload).unwrap();
        let Payload::RecordAnchor(anchor) = &prepared.transaction.body.payload else {
            panic!("an anchor")
        };
        let hash: [u8; 32] = anchor.ciphertext_hash.as_ref().try_into().unwrap();
        let binding = Binding {
            record: prepared.record,
            version: 1,
            patient: [7; 16],
        };
        let wrap = upload
            .wraps
            .iter()
            .find(|w| w.recipient == patient.encryption.public())
            .unwrap();
        assert_eq!(
            open(&patient, &binding, &hash, &upload.envelope, wrap).unwrap(),
            json.as_bytes()
        );
        assert!(open(&stranger, &binding, &hash, &upload.envelope, wrap).is_err());
        let mut other = upload.envelope.clone();
        other[10] ^= 1;
        assert!(matches!(
            open(&patient, &binding, &hash, &other, wrap),
            Err(Error::Protocol(_))
        ));
        assert!(check(b"{\"resourceType\":\"Observation\"}").is_err());
        // The same version as a sealed page serves it, opened and presented.
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut entry = serde_json::json!({
            "record": hex::encode(prepared.record),
            "version": 1,
            "patient": id,
            "last_updated": "2026-12-04T00:00:00.005Z",
            "ciphertext_hash": hex::encode(hash),
            "envelope": b64.encode(&upload.envelope),
            "wrap": b64.encode(wrap.encode()),
        });
        let served: serde_json::Value =
            serde_json::from_str(&open_sealed(&patient, &entry).unwrap()).unwrap();
        assert_eq!(served["id"], hex::encode(prepared.record));
        assert_eq!(served["meta"]["versionId"], "1");
        assert_eq!(served["status"], "final");
        assert!(open_sealed(&stranger, &entry).is_err());
        entry["version"] = 2.into();
        assert!(
            open_sealed(&patient, &entry).is_err(),
            "bound to its version"
        );
    }
}
