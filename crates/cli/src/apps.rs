//! `ehrchain app` (an institution registers the SMART apps its people use) and
//! `ehrchain passkey` (an operator hands a person a one-time passkey enrolment code).

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use ehrchain_client::Session;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum AppCommand {
    /// Register a SMART app on chain (or replace this institution's registration of it).
    /// Without --jwk the app is public (a browser or phone app: PKCE only); with one it is
    /// confidential and authenticates with private_key_jwt.
    ///
    /// Example: ehrchain app register --api https://127.0.0.1:8700 --key node-0/validator.key --client-id my-chart --name "My Chart" --redirect-uri https://chart.example/callback
    Register {
        #[arg(long)]
        api: String,
        /// The institution's key file (its validator key).
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        client_id: String,
        /// The name people see on the consent screen.
        #[arg(long)]
        name: String,
        /// A redirect URI the app receives its code at (exact match; up to 4).
        #[arg(long = "redirect-uri", required = true)]
        redirect_uris: Vec<String>,
        /// The public JWK (RS384 or ES384) of a confidential app.
        #[arg(long)]
        jwk: Option<PathBuf>,
    },
    /// Withdraw an app this institution registered: no new logins, and its sessions end.
    ///
    /// Example: ehrchain app remove --api https://127.0.0.1:8700 --key node-0/validator.key --client-id my-chart
    Remove {
        #[arg(long)]
        api: String,
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        client_id: String,
    },
}

#[derive(Subcommand)]
pub enum PasskeyCommand {
    /// Write a one-time passkey enrolment code for a person this node holds the key of (a
    /// custodial patient, or a clinician whose `<identity>.seed` is in the custody
    /// directory), and print it. Run on the node's own machine: only the code's hash is kept.
    ///
    /// Example: ehrchain passkey enrolment-code --config node-0/config.toml --identity 3f2a…
    EnrolmentCode {
        #[arg(long)]
        config: PathBuf,
        /// The person's identity id (64 hex characters).
        #[arg(long)]
        identity: String,
        /// How many days the code stays valid.
        #[arg(long, default_value_t = 7)]
        days: u64,
    },
}

/// Run `ehrchain app ...`.
pub fn app(command: AppCommand) -> Result<()> {
    let (AppCommand::Register { api, key, .. } | AppCommand::Remove { api, key, .. }) = &command;
    crate::client::use_key(api, key)?;
    let session = Session::open(crate::client::Http::AS_CURRENT, api)?;
    let signer = crate::records::load_signer(key)?;
    let (payload, what) = match command {
        AppCommand::Register {
            client_id,
            name,
            redirect_uris,
            jwk,
            ..
        } => {
            for uri in &redirect_uris {
                if !ehrchain_types::transaction::is_redirect_uri(uri) {
                    bail!("{uri} is not an absolute http(s) URI without a fragment");
                }
            }
            let jwk = jwk
                .map(|path| crate::records::read_client_jwk(&path).map(|(text, _)| text))
                .transpose()?;
            let what = format!(
                "app {client_id} ({})",
                if jwk.is_some() {
                    "confidential"
                } else {
                    "public"
                }
            );
            (
                ehrchain_types::Payload::RegisterApp(ehrchain_types::AppRegistration {
                    client_id,
                    name,
                    redirect_uris,
                    jwk,
                }),
                format!("registered: {what}"),
            )
        }
        AppCommand::Remove { client_id, .. } => (
            ehrchain_types::Payload::RemoveApp {
                client_id: client_id.clone(),
            },
            format!("removed: app {client_id}"),
        ),
    };
    let (tx, status) = session.send(&signer, payload)?;
    println!(
        "{what} at height {} (transaction {})",
        status["height"],
        hex::encode(tx.id())
    );
    Ok(())
}

/// Run `ehrchain passkey ...`.
pub fn passkey(command: PasskeyCommand) -> Result<()> {
    let PasskeyCommand::EnrolmentCode {
        config,
        identity,
        days,
    } = command;
    let config = crate::config::NodeConfig::load(&config)?;
    let identity = ehrchain_types::public_key_from_hex(&identity)
        .context("--identity must be 64 hex characters")?;
    let code = ehrchain_api::passkey::write_enrolment_code(
        &config.data_dir.join("custody"),
        &identity,
        ehrchain_api::ambient::now_ms(),
        std::time::Duration::from_secs(days * 24 * 3600),
    )?;
    println!("{code}");
    eprintln!(
        "enrolment code for {identity}, valid {days} days, used once at {}/auth/enrol",
        config.api_url()
    );
    Ok(())
}
