// The ehrchain client library (Rust, crates/wasm) in the browser: load the module and call
// it. Inputs go into the module's memory; each answer is [len u32 LE][status u8][bytes].
// Keys never leave this page: the module does no I/O.
const encoder = new TextEncoder();
const decoder = new TextDecoder();

// The module's few imports belong to wasm-bindgen glue it never calls on these paths, so
// each throws; except randomness (getrandom's `crypto.getRandomValues(buf)`, whose raw
// import takes the buffer as pointer and length), which batched signature checks need.
let memory = null;
const unused = new Proxy({}, {
  get: (_, name) => () => { throw new Error(`ehrchain client: ${String(name)} is unavailable`); },
});
const placeholder = new Proxy({}, {
  get: (_, name) => (String(name).startsWith('__wbg_getRandomValues_')
    ? (pointer, len) => { crypto.getRandomValues(new Uint8Array(memory.buffer, pointer, len)); }
    : unused[name]),
});

// 32 bytes of WebCrypto randomness, in hex: what batches a certificate's signature checks.
const freshSeed = () => Array.from(crypto.getRandomValues(new Uint8Array(32)), (b) => b.toString(16).padStart(2, '0')).join('');

export async function loadClient(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`the client module did not load (${response.status})`);
  const { instance } = await WebAssembly.instantiate(await response.arrayBuffer(), {
    __wbindgen_placeholder__: placeholder,
    __wbindgen_externref_xform__: unused,
  });
  const wasm = instance.exports;
  memory = wasm.memory;
  const put = (text) => {
    const bytes = encoder.encode(text);
    const pointer = wasm.alloc(bytes.length);
    new Uint8Array(wasm.memory.buffer, pointer, bytes.length).set(bytes);
    return [pointer, bytes.length];
  };
  const call = (name, ...texts) => {
    const inputs = texts.map(put);
    const at = wasm[name](...inputs.flat());
    const view = new DataView(wasm.memory.buffer);
    const len = view.getUint32(at, true);
    const status = view.getUint8(at + 4);
    const text = decoder.decode(new Uint8Array(wasm.memory.buffer, at + 5, len - 5).slice());
    wasm.release(at, len);
    for (const [pointer, length] of inputs) wasm.release(pointer, length);
    if (status !== 0) throw new Error(text);
    return text;
  };
  return {
    // The identity id (hex public key) of the key in a key file's text.
    identityOfKey: (keyText) => call('identity_of_key', keyText),
    // The public keys of a key file's key: {identity, encryption_key} (hex).
    describeKey: (keyText) => JSON.parse(call('describe_key', keyText)),
    // An inclusion proof (a proof file or a Provenance) checked against a genesis, offline:
    // {transaction, height, block, finalized_height}, or an error saying why not.
    verifyProof: (genesisText, proofText) => JSON.parse(call('verify_proof', genesisText, proofText, freshSeed())),
    // A block's finality proof (GET /chain/blocks/{height}/proof) checked against a genesis,
    // offline: {height, block, finalized_height, validators}, or an error saying why not.
    verifyBlock: (genesisText, proofText) => JSON.parse(call('verify_block', genesisText, proofText, freshSeed())),
    // A page of the patient's own sealed record (GET /ui/sealed, as text) opened with the key
    // in a key file's text: {resources: [FHIR resource], failed: [{record, reason}]}.
    openSealed: (keyText, pageText) => JSON.parse(call('open_sealed', keyText, pageText)),
    // A signed SMART App Launch login: {token_url, challenge, client_id, scope, now_s}.
    signAppLogin: (keyText, request) => call('sign_app_login', keyText, JSON.stringify(request)),
  };
}
