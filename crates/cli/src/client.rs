//! Commands that talk to a node's HTTP API.

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use ehrchain_types::{Payload, TransactionBody, digest_from_hex};
use serde_json::Value;
use std::{path::PathBuf, process::ExitCode};

#[derive(Subcommand)]
pub enum TxCommand {
    /// Anchor a SHA-256 digest on chain, signed with KEY; prints the transaction status.
    ///
    /// Example: ehrchain tx anchor --api https://127.0.0.1:8700 --key alice.key --digest <64 hex> --wait
    Anchor {
        #[arg(long)]
        api: String,
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        digest: String,
        #[arg(long, default_value_t = 0)]
        label: u16,
        /// Wait until the transaction is committed and print its proof.
        #[arg(long)]
        wait: bool,
    },
    /// Print a transaction's status and, once committed, its inclusion proof.
    ///
    /// Example: ehrchain tx status --api https://127.0.0.1:8700 --hash <64 hex>
    Status {
        #[arg(long)]
        api: String,
        /// The key file of the identity asking: the command logs in with it.
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        hash: String,
    },
}

#[derive(Subcommand)]
pub enum ProofCommand {
    /// Save the inclusion proof of a committed transaction as JSON.
    ///
    /// Example: ehrchain proof get --api https://127.0.0.1:8700 --hash <64 hex> --out proof.json
    Get {
        #[arg(long)]
        api: String,
        /// The key file of the identity asking: the command logs in with it.
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        hash: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a proof offline against the validators named in a genesis file. The file is a
    /// proof (`proof get`) or a FHIR Provenance of a record (`GET /fhir/Provenance?target=`).
    ///
    /// Example: ehrchain proof verify --proof proof.json --genesis net/genesis.json
    Verify {
        #[arg(long)]
        proof: PathBuf,
        #[arg(long)]
        genesis: PathBuf,
    },
}

/// Certificate authorities trusted for HTTPS instead of the public web roots (`--ca`).
static TRUSTED: std::sync::Mutex<Vec<ureq::tls::Certificate<'static>>> =
    std::sync::Mutex::new(Vec::new());

/// Trust the certificate authorities in the PEM file `path` for every request from now on.
pub fn trust_ca(path: &std::path::Path) -> Result<()> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(cert)) => Some(Ok(cert)),
            Ok(_) => None,
            Err(error) => Some(Err(error)),
        })
        .collect::<Result<_, _>>()
        .with_context(|| format!("{} is not a PEM certificate file", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", path.display());
    TRUSTED.lock().expect("trusted roots").extend(certs);
    Ok(())
}

/// An agent that trusts the `--ca` roots, or the public web roots without them.
pub fn agent_config() -> ureq::config::ConfigBuilder<ureq::typestate::AgentScope> {
    let trusted = TRUSTED.lock().expect("trusted roots").clone();
    let roots = if trusted.is_empty() {
        ureq::tls::RootCerts::WebPki
    } else {
        ureq::tls::RootCerts::new_with_certs(&trusted)
    };
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
}

pub fn agent() -> ureq::Agent {
    agent_config()
        .timeout_global(Some(std::time::Duration::from_secs(60)))
        .build()
        .into()
}

/// The identity this process acts as: every request to the node's API carries a bearer token
/// for it (every endpoint but metadata, discovery, login and metrics needs one). Each login
/// happens at the first request that needs it and is kept for the rest of the process.
#[derive(Default)]
struct Logins {
    /// The node and the identity (its key seed) requests go to and act as.
    current: Option<(String, [u8; 32])>,
    tokens: std::collections::HashMap<(String, [u8; 32]), String>,
}

static LOGINS: std::sync::Mutex<Option<Logins>> = std::sync::Mutex::new(None);

/// Act as the identity of the key file `key` towards `api` from now on.
pub fn use_key(api: &str, key: &std::path::Path) -> Result<()> {
    use_seed(api, &crate::config::read_seed(key)?);
    Ok(())
}

/// Act as the identity of `seed` towards `api` from now on.
pub fn use_seed(api: &str, seed: &[u8; 32]) {
    let mut guard = LOGINS.lock().expect("login lock");
    guard.get_or_insert_with(Logins::default).current =
        Some((api.trim_end_matches('/').to_string(), *seed));
}

/// A bearer token for the identity of `seed` at `api`, logging in on first use.
pub fn token_for(api: &str, seed: &[u8; 32]) -> Result<String> {
    let api = api.trim_end_matches('/').to_string();
    let mut guard = LOGINS.lock().expect("login lock");
    let logins = guard.get_or_insert_with(Logins::default);
    if let Some(token) = logins.tokens.get(&(api.clone(), *seed)) {
        return Ok(token.clone());
    }
    let token = login_seed(&api, seed)?;
    logins.tokens.insert((api, *seed), token.clone());
    Ok(token)
}

/// The `Authorization` header value for a request to `url`, as the current identity (at
/// whichever node `url` names: a token is good at the node that issued it).
pub fn bearer(url: &str) -> Result<Option<String>> {
    let current = LOGINS
        .lock()
        .expect("login lock")
        .as_ref()
        .and_then(|l| l.current.clone());
    let Some((_, seed)) = current else {
        return Ok(None);
    };
    let Some(origin) = origin(url) else {
        return Ok(None);
    };
    Ok(Some(format!("Bearer {}", token_for(origin, &seed)?)))
}

/// `scheme://host:port` of a URL.
fn origin(url: &str) -> Option<&str> {
    let after_scheme = url.find("://")? + 3;
    let end = url[after_scheme..]
        .find('/')
        .map_or(url.len(), |i| after_scheme + i);
    Some(&url[..end])
}

/// `request` with this process's bearer token for the node `url` names.
fn authorized<B>(request: ureq::RequestBuilder<B>, url: &str) -> Result<ureq::RequestBuilder<B>> {
    Ok(match bearer(url)? {
        Some(value) => request.header("Authorization", value),
        None => request,
    })
}

/// A GET to `url` that carries this process's bearer token.
pub fn get_request(url: &str) -> Result<ureq::RequestBuilder<ureq::typestate::WithoutBody>> {
    authorized(agent().get(url), url)
}

/// Read a JSON answer; a non-2xx answer becomes an error carrying the server's message.
pub fn answer(url: &str, mut response: ureq::http::Response<ureq::Body>) -> Result<Value> {
    let status = response.status();
    let body: Value = response.body_mut().read_json().unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(anyhow::Error::new(ehrchain_client::Error::from_answer(
            status.as_u16(),
            &body,
        ))
        .context(url.to_string()));
    }
    Ok(body)
}

/// Whether a failed submission should be signed again with a fresh nonce, or asked again:
/// decided by the stable code a node gave (`ErrorCode`), never by its message.
pub fn retryable(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|e| e.downcast_ref::<ehrchain_client::Error>())
        .any(|e| e.resign() || e.transient())
}

/// GET a JSON document.
pub fn get_json(url: &str) -> Result<Value> {
    let response = get_request(url)?
        .call()
        .with_context(|| format!("cannot reach {url}"))?;
    answer(url, response)
}

pub fn post_bytes(url: &str, bytes: Vec<u8>) -> Result<Value> {
    send_bytes(authorized(agent().post(url), url)?, url, bytes)
}

fn send_bytes(
    request: ureq::RequestBuilder<ureq::typestate::WithBody>,
    url: &str,
    bytes: Vec<u8>,
) -> Result<Value> {
    let response = request
        .header("content-type", "application/octet-stream")
        .send(&bytes[..])
        .with_context(|| format!("cannot reach {url}"))?;
    answer(url, response)
}

pub fn tx(command: TxCommand) -> Result<ExitCode> {
    let (TxCommand::Anchor { api, key, .. } | TxCommand::Status { api, key, .. }) = &command;
    use_key(api, key)?;
    match command {
        TxCommand::Anchor {
            api,
            key,
            digest,
            label,
            wait,
        } => {
            let api = api.trim_end_matches('/');
            let key = crate::config::read_key(&key)?;
            let signer = ehrchain_chain::application::key_public(&key);
            let digest = digest_from_hex(&digest).context("--digest must be 64 hex characters")?;
            let status = get_json(&format!("{api}/chain/status"))?;
            let chain_id = status["chain_id"]
                .as_u64()
                .context("status lacks chain_id")?;
            let account = get_json(&format!("{api}/chain/accounts/{signer}"))?;
            let nonce = account["next_nonce"]
                .as_u64()
                .context("account lacks next_nonce")?;
            let tx = TransactionBody {
                chain_id,
                signer,
                nonce,
                payload: Payload::Anchor { label, digest },
            }
            .sign(&key);
            let accepted = post_bytes(&format!("{api}/chain/transactions"), tx.bytes().to_vec())?;
            let hash = accepted["hash"]
                .as_str()
                .context("no hash in answer")?
                .to_string();
            if wait {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
                loop {
                    let status =
                        get_json(&format!("{api}/chain/transactions/{hash}?wait_ms=10000"))?;
                    if status["status"] == "committed" && !status["proof"].is_null() {
                        println!("{}", serde_json::to_string_pretty(&status)?);
                        break;
                    }
                    if std::time::Instant::now() > deadline {
                        bail!("transaction {hash} not committed within 120 s");
                    }
                }
            } else {
                println!("{}", serde_json::to_string_pretty(&accepted)?);
            }
        }
        TxCommand::Status { api, hash, .. } => {
            let status = get_json(&format!(
                "{}/chain/transactions/{hash}",
                api.trim_end_matches('/')
            ))?;
            println!("{}", serde_json::to_string_pretty(&status)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn proof(command: ProofCommand) -> Result<ExitCode> {
    if let ProofCommand::Get { api, key, .. } = &command {
        use_key(api, key)?;
    }
    match command {
        ProofCommand::Get { api, hash, out, .. } => {
            let status = get_json(&format!(
                "{}/chain/transactions/{hash}?wait_ms=10000",
                api.trim_end_matches('/')
            ))?;
            if status["proof"].is_null() {
                bail!(
                    "transaction {hash} has no proof yet (status: {})",
                    status["status"]
                );
            }
            std::fs::write(&out, serde_json::to_string_pretty(&status["proof"])?)?;
            println!("{}", out.display());
        }
        ProofCommand::Verify { proof, genesis } => {
            let genesis = crate::config::load_genesis(&genesis)?;
            let text = std::fs::read(&proof)
                .with_context(|| format!("cannot read {}", proof.display()))?;
            let proof = ehrchain_client::proof::parse(&text)?;
            match proof.verify(&genesis) {
                Ok(verified) => println!(
                    "valid: transaction {} is in block {} at height {}, finalized at height {}",
                    hex::encode(verified.transaction),
                    hex::encode(verified.block),
                    verified.height,
                    verified.finalized_height
                ),
                Err(error) => {
                    println!("invalid: {error}");
                    return Ok(ExitCode::from(2));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn origins() {
        assert_eq!(
            super::origin("http://127.0.0.1:8700/chain/status?x=1"),
            Some("http://127.0.0.1:8700")
        );
        assert_eq!(
            super::origin("https://node.example"),
            Some("https://node.example")
        );
        assert_eq!(super::origin("node"), None);
    }
}

#[derive(Subcommand)]
pub enum AuthCommand {
    /// Log in as SMART Backend Services does: sign a JWT client assertion (EdDSA) with the
    /// identity's key, exchange it at the node's token endpoint, print the bearer token.
    ///
    /// Example: T=$(ehrchain auth token --api https://127.0.0.1:8700 --key dr.key)
    ///          curl --cacert .dev/tls/ca.pem -H "Authorization: Bearer $T" https://127.0.0.1:8700/fhir/Observation?patient=<id>
    Token {
        #[arg(long)]
        api: String,
        #[arg(long)]
        key: PathBuf,
    },
}

/// Seconds since the Unix epoch, for a login's assertion.
fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Sign a client assertion for `seed` addressed to `token_url` (`ehrchain_client::smart`).
pub fn client_assertion(seed: &[u8; 32], token_url: &str) -> Result<String> {
    Ok(ehrchain_client::smart::client_assertion(
        seed,
        token_url,
        now_s(),
    )?)
}

/// Get a bearer token for the identity of `key` at `api`.
pub fn login(api: &str, key: &std::path::Path) -> Result<String> {
    login_seed(api, &crate::config::read_seed(key)?)
}

/// Get a bearer token for the identity of `seed` at `api` (a new login each call).
pub fn login_seed(api: &str, seed: &[u8; 32]) -> Result<String> {
    // Anonymous: a login must not ask for the token it is getting (the login table is locked
    // while a token is being fetched).
    ehrchain_client::smart::login(&Http::ANONYMOUS, api, seed, now_s())
        .with_context(|| format!("cannot log in at {}", api.trim_end_matches('/')))
}

/// The CLI's HTTP agent as the client library's transport: the `--ca` roots, and (unless
/// anonymous) this process's bearer token for the node a URL names.
pub struct Http {
    anonymous: bool,
}

impl Http {
    /// Requests as the identity this process acts as (`use_key`).
    pub const AS_CURRENT: Http = Http { anonymous: false };
    /// Requests without a bearer token: discovery and login.
    pub const ANONYMOUS: Http = Http { anonymous: true };
}

/// The typed error behind an `anyhow` chain of this module (a node's answer keeps its code);
/// anything else means the node was not reached.
fn typed(url: &str, error: anyhow::Error) -> ehrchain_client::Error {
    match error.downcast::<ehrchain_client::Error>() {
        Ok(typed) => typed,
        Err(other) => ehrchain_client::Error::Unreachable {
            url: url.to_string(),
            message: format!("{other:#}"),
        },
    }
}

impl ehrchain_client::Transport for Http {
    fn get_json(&self, url: &str) -> Result<Value, ehrchain_client::Error> {
        let request = if self.anonymous {
            Ok(agent().get(url))
        } else {
            get_request(url)
        };
        request
            .and_then(|r| r.call().with_context(|| format!("cannot reach {url}")))
            .and_then(|response| answer(url, response))
            .map_err(|e| typed(url, e))
    }

    fn post_bytes(&self, url: &str, body: Vec<u8>) -> Result<Value, ehrchain_client::Error> {
        let request = if self.anonymous {
            Ok(agent().post(url))
        } else {
            authorized(agent().post(url), url)
        };
        request
            .and_then(|r| send_bytes(r, url, body))
            .map_err(|e| typed(url, e))
    }

    fn post_form(&self, url: &str, form: &[(&str, &str)]) -> Result<Value, ehrchain_client::Error> {
        let response = agent()
            .post(url)
            .send_form(form.iter().copied())
            .map_err(|e| typed(url, e.into()))?;
        answer(url, response).map_err(|e| typed(url, e))
    }

    fn pause(&self, duration: std::time::Duration) {
        std::thread::sleep(duration);
    }
}

/// Where and as whom an `ehrchain fhir` request goes.
#[derive(clap::Args)]
pub struct FhirLogin {
    #[arg(long)]
    api: String,
    /// The identity's key file; the command logs in with it first.
    #[arg(long)]
    key: PathBuf,
}

#[derive(Subcommand)]
pub enum FhirCommand {
    /// GET a path under /fhir and print the answer: a read, vread, history, search
    /// (searchset Bundle), `$everything`, Consent, AuditEvent or Provenance.
    ///
    /// Example: ehrchain fhir get --api https://127.0.0.1:8700 --key dr.key 'Observation?patient=<id>&code=8867-4'
    ///          ehrchain fhir get --api https://127.0.0.1:8700 --key alice.key 'AuditEvent?patient=<id>'
    Get {
        #[command(flatten)]
        login: FhirLogin,
        /// The path under /fhir, with its query.
        path: String,
    },
    /// POST a resource from FILE (`-` for standard input): a create at `/fhir/{type}`, a
    /// Consent (a grant), or a transaction or batch Bundle when PATH is omitted.
    ///
    /// Example: ehrchain fhir post --api https://127.0.0.1:8700 --key dr.key --file obs.json Observation
    ///          ehrchain fhir post --api https://127.0.0.1:8700 --key dr.key --file bundle.json
    Post {
        #[command(flatten)]
        login: FhirLogin,
        #[arg(long)]
        file: PathBuf,
        #[arg(default_value = "")]
        path: String,
    },
    /// PUT a resource from FILE at `/fhir/{type}/{id}`: a new version, or a Consent set to
    /// `inactive` (a revocation). `--if-match W/"2"` refuses if another version came first.
    ///
    /// Example: ehrchain fhir put --api https://127.0.0.1:8700 --key dr.key --file obs.json Observation/<id>
    Put {
        #[command(flatten)]
        login: FhirLogin,
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        if_match: Option<String>,
        path: String,
    },
}

/// Run one FHIR request as the identity of `key`; print the answer (pretty JSON) on success,
/// the OperationOutcome on standard error and exit 1 otherwise.
pub fn fhir(command: FhirCommand) -> Result<ExitCode> {
    let read_body = |file: &PathBuf| -> Result<Vec<u8>> {
        if file.as_os_str() == "-" {
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut body)?;
            Ok(body)
        } else {
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))
        }
    };
    let (FhirCommand::Get { login: who, .. }
    | FhirCommand::Post { login: who, .. }
    | FhirCommand::Put { login: who, .. }) = &command;
    let api = who.api.trim_end_matches('/').to_string();
    let token = login(&api, &who.key)?;
    let url = |path: &str| {
        let path = path.trim_start_matches('/');
        if path.is_empty() {
            format!("{api}/fhir")
        } else {
            format!("{api}/fhir/{path}")
        }
    };
    let bearer = format!("Bearer {token}");
    let agent = agent();
    let response = match &command {
        FhirCommand::Get { path, .. } => agent
            .get(&url(path))
            .header("Authorization", &bearer)
            .header("Accept", "application/fhir+json")
            .call(),
        FhirCommand::Post { path, file, .. } => agent
            .post(&url(path))
            .header("Authorization", &bearer)
            .header("Content-Type", "application/fhir+json")
            .send(&read_body(file)?[..]),
        FhirCommand::Put {
            path,
            file,
            if_match,
            ..
        } => {
            let mut request = agent
                .put(&url(path))
                .header("Authorization", &bearer)
                .header("Content-Type", "application/fhir+json");
            if let Some(tag) = if_match {
                request = request.header("If-Match", tag);
            }
            request.send(&read_body(file)?[..])
        }
    }
    .with_context(|| format!("cannot reach {api}"))?;
    let status = response.status();
    let text = response.into_body().read_to_string().unwrap_or_default();
    let pretty = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(text);
    if status.is_success() {
        println!("{pretty}");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{status}\n{pretty}");
        Ok(ExitCode::from(1))
    }
}

pub fn auth(command: AuthCommand) -> Result<ExitCode> {
    match command {
        AuthCommand::Token { api, key } => println!("{}", login(&api, &key)?),
    }
    Ok(ExitCode::SUCCESS)
}
