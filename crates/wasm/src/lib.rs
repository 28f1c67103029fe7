//! The browser's entry points into the `client` crate, for the node's login page and the web
//! UI: a wasm32 module with a plain C ABI, so that a page loads it with
//! `WebAssembly.instantiate` and a dozen lines of JavaScript, and no generated glue (and no
//! tool whose version must match a crate's) stands between the page and the Rust code.
//!
//! Calling convention: the page copies inputs into memory it got from [`alloc`], and every
//! function answers a pointer to a buffer `[len: u32 LE][status: u8][bytes]`, status 0 for
//! success (the bytes are the answer) or 1 for an error (the bytes are its message), which
//! the page reads and hands back to [`release`]. Keys stay in the page's memory and this
//! module's: nothing here does I/O.
//!
//! Only wasm32 builds have these functions; a native build is an empty library.

#![cfg(target_arch = "wasm32")]

use ehrchain_client::smart;

/// Memory for `len` bytes of input, owned by the page until it passes it to a function.
#[unsafe(no_mangle)]
pub extern "C" fn alloc(len: usize) -> *mut u8 {
    let mut buffer = Vec::<u8>::with_capacity(len);
    let pointer = buffer.as_mut_ptr();
    std::mem::forget(buffer);
    pointer
}

/// Give back a buffer from [`alloc`] (`len` bytes) or an answer (`len` its total length).
///
/// # Safety
/// `pointer` and `len` must be exactly what [`alloc`] took or an answer's header gave.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn release(pointer: *mut u8, len: usize) {
    // SAFETY: the caller hands back a buffer this module allocated with this capacity.
    drop(unsafe { Vec::from_raw_parts(pointer, 0, len) });
}

fn answer(result: Result<Vec<u8>, String>) -> *mut u8 {
    let (status, bytes) = match result {
        Ok(bytes) => (0u8, bytes),
        Err(message) => (1u8, message.into_bytes()),
    };
    let mut out = Vec::with_capacity(5 + bytes.len());
    out.extend_from_slice(&((5 + bytes.len()) as u32).to_le_bytes());
    out.push(status);
    out.extend_from_slice(&bytes);
    out.shrink_to_fit();
    let pointer = out.as_mut_ptr();
    std::mem::forget(out);
    pointer
}

/// # Safety
/// `pointer` must point at `len` readable bytes from [`alloc`].
unsafe fn input<'a>(pointer: *const u8, len: usize) -> Result<&'a str, String> {
    // SAFETY: the page wrote `len` bytes at `pointer`, in a buffer it got from `alloc`.
    let bytes = unsafe { std::slice::from_raw_parts(pointer, len) };
    std::str::from_utf8(bytes).map_err(|_| "input is not UTF-8".to_string())
}

/// The identity id (64 hex characters) of the key in a key file's text.
///
/// # Safety
/// `text` must point at `text_len` bytes from [`alloc`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn identity_of_key(text: *const u8, text_len: usize) -> *mut u8 {
    let result = unsafe { input(text, text_len) }.and_then(|text| {
        let seed = smart::seed_from_key_text(text).map_err(|e| e.to_string())?;
        Ok(smart::identity_of_seed(&seed).into_bytes())
    });
    answer(result)
}

/// The public keys of the key in a key file's text, as JSON: `{"identity", "encryption_key"}`
/// (hex), what registering a key made in the browser puts on chain.
///
/// # Safety
/// `text` must point at `text_len` bytes from [`alloc`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn describe_key(text: *const u8, text_len: usize) -> *mut u8 {
    let result = unsafe { input(text, text_len) }.and_then(|text| {
        let seed = smart::seed_from_key_text(text).map_err(|e| e.to_string())?;
        Ok(serde_json::json!({
            "identity": smart::identity_of_seed(&seed),
            "encryption_key": smart::encryption_key_of_seed(&seed),
        })
        .to_string()
        .into_bytes())
    });
    answer(result)
}

/// Sign a SMART App Launch login with the key in a key file's text. `request` is JSON:
/// `{"token_url", "challenge", "client_id", "scope", "now_s"}`; the answer is the compact JWT.
///
/// # Safety
/// `text` and `request` must point at `text_len` and `request_len` bytes from [`alloc`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sign_app_login(
    text: *const u8,
    text_len: usize,
    request: *const u8,
    request_len: usize,
) -> *mut u8 {
    let result = (|| {
        let seed = smart::seed_from_key_text(unsafe { input(text, text_len) }?)
            .map_err(|e| e.to_string())?;
        let request: serde_json::Value =
            serde_json::from_str(unsafe { input(request, request_len) }?)
                .map_err(|_| "the request is not JSON".to_string())?;
        let field = |name: &str| {
            request[name]
                .as_str()
                .ok_or_else(|| format!("the request has no {name}"))
        };
        let now_s = request["now_s"]
            .as_u64()
            .ok_or_else(|| "the request has no now_s".to_string())?;
        Ok(smart::app_login_assertion(
            &seed,
            field("token_url")?,
            field("challenge")?,
            field("client_id")?,
            field("scope")?,
            now_s,
        )
        .into_bytes())
    })();
    answer(result)
}

/// Check an inclusion proof (a proof file's JSON, or a FHIR `Provenance` carrying one) against
/// a genesis document, with no network: the answer is JSON `{"transaction", "height",
/// "block", "finalized_height"}` for a transaction in a block that more than two thirds of the
/// validators finalized, following each certified change of the validator set.
///
/// `seed` is 64 hex characters of fresh randomness (the page's `crypto.getRandomValues`): it
/// randomizes the batched signature check, so it must be unpredictable to the proof's maker.
///
/// # Safety
/// `genesis`, `proof` and `seed` must point at `genesis_len`, `proof_len` and `seed_len`
/// bytes from [`alloc`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn verify_proof(
    genesis: *const u8,
    genesis_len: usize,
    proof: *const u8,
    proof_len: usize,
    seed: *const u8,
    seed_len: usize,
) -> *mut u8 {
    let result = (|| {
        let mut rng = rng_of(unsafe { input(seed, seed_len) }?)?;
        let genesis = genesis_of(unsafe { input(genesis, genesis_len) }?)?;
        let proof = ehrchain_client::proof::parse(unsafe { input(proof, proof_len) }?.as_bytes())
            .map_err(|e| e.to_string())?;
        let verified = proof
            .verify_with(&genesis, &mut rng)
            .map_err(|e| e.to_string())?;
        Ok(serde_json::json!({
            "transaction": hex::encode(verified.transaction),
            "height": verified.height,
            "block": hex::encode(verified.block),
            "finalized_height": verified.finalized_height,
        })
        .to_string()
        .into_bytes())
    })();
    answer(result)
}

/// Check a block's finality proof (`GET /chain/blocks/{height}/proof`) against a genesis
/// document, with no network: the answer is JSON `{"height", "block", "finalized_height",
/// "validators"}` when more than two thirds of the validators of the block's epoch (reached
/// through each certified change of the set) signed its certificate. `seed` as for
/// [`verify_proof`].
///
/// # Safety
/// `genesis`, `proof` and `seed` must point at `genesis_len`, `proof_len` and `seed_len`
/// bytes from [`alloc`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn verify_block(
    genesis: *const u8,
    genesis_len: usize,
    proof: *const u8,
    proof_len: usize,
    seed: *const u8,
    seed_len: usize,
) -> *mut u8 {
    let result = (|| {
        let mut rng = rng_of(unsafe { input(seed, seed_len) }?)?;
        let genesis = genesis_of(unsafe { input(genesis, genesis_len) }?)?;
        let proof =
            ehrchain_client::proof::parse_block(unsafe { input(proof, proof_len) }?.as_bytes())
                .map_err(|e| e.to_string())?;
        let verified = proof
            .verify_with(&genesis, &mut rng)
            .map_err(|e| e.to_string())?;
        Ok(serde_json::json!({
            "height": verified.height,
            "block": hex::encode(verified.block),
            "finalized_height": verified.finalized_height,
            "validators": verified.validators,
        })
        .to_string()
        .into_bytes())
    })();
    answer(result)
}

/// Open a page of the patient's own sealed record (`GET /ui/sealed`, its JSON) with the key in
/// a key file's text, here in the browser: the answer is JSON `{"resources": [..],
/// "failed": [{"record", "reason"}]}`, each resource as a FHIR server serves it. An entry the
/// node refused (`denied`) or that does not open (a wrong key, bytes that do not match their
/// hash) is listed in `failed` with its reason.
///
/// # Safety
/// `text` and `page` must point at `text_len` and `page_len` bytes from [`alloc`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn open_sealed(
    text: *const u8,
    text_len: usize,
    page: *const u8,
    page_len: usize,
) -> *mut u8 {
    let result = (|| {
        let seed = smart::seed_from_key_text(unsafe { input(text, text_len) }?)
            .map_err(|e| e.to_string())?;
        let reader = ehrchain_client::Signer::from_seed(&seed);
        let page: serde_json::Value = serde_json::from_str(unsafe { input(page, page_len) }?)
            .map_err(|_| "the page is not JSON".to_string())?;
        let entries = page["entries"]
            .as_array()
            .ok_or_else(|| "the page has no entries".to_string())?;
        let mut resources = Vec::with_capacity(entries.len());
        let mut failed = Vec::new();
        for entry in entries {
            let record = entry["record"].clone();
            if let Some(reason) = entry["denied"].as_str() {
                failed.push(serde_json::json!({"record": record, "reason": reason}));
                continue;
            }
            match ehrchain_client::record::open_sealed(&reader, entry) {
                Ok(resource) => resources.push(resource),
                Err(error) => {
                    failed.push(serde_json::json!({"record": record, "reason": error.to_string()}))
                }
            }
        }
        // Each resource is already JSON text: spliced in, not parsed again.
        let mut out = String::from("{\"resources\":[");
        out.push_str(&resources.join(","));
        out.push_str("],\"failed\":");
        out.push_str(&serde_json::Value::from(failed).to_string());
        out.push('}');
        Ok(out.into_bytes())
    })();
    answer(result)
}

/// A genesis document from the page, its validator keys checked.
fn genesis_of(text: &str) -> Result<ehrchain_client::proof::Genesis, String> {
    ehrchain_client::proof::genesis(text.as_bytes()).map_err(|e| e.to_string())
}

/// The batch-verification randomness of a proof check, from 64 hex characters the page drew
/// from WebCrypto.
fn rng_of(seed: &str) -> Result<rand::rngs::StdRng, String> {
    let seed: [u8; 32] = hex::decode(seed)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| "the seed is 64 hex characters".to_string())?;
    Ok(<rand::rngs::StdRng as rand::SeedableRng>::from_seed(seed))
}
