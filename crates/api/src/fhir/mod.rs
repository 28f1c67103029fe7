//! FHIR R4 REST over the chain: `/fhir` on every node.
//!
//! Every request carries a bearer token from `/auth/token` (see [`crate::gateway`]); what it
//! does becomes a transaction signed by the caller's on-chain session. A read is decided here
//! by the contract's own code against this node's final state when the gateway may decide it
//! (`contracts::access::gateway_reader`): an allowed read is journalled and flushed before the
//! record is opened, and reaches the chain in the next access-log batch. Any other read (a
//! denial, an unknown record, a stale state) goes to the chain as an `Access` transaction and
//! waits for its outcome; a denied read is answered 403 and stays on chain. A create or update
//! is sealed here (fresh data key, wrapped for `contracts::access::version_readers`) and
//! anchored. `Consent` maps to grants, `AuditEvent` to the on-chain trail. Errors are
//! `OperationOutcome`s (`crate::error::ApiError`) that name the rule and its stable code and
//! never echo content.
//!
//! One module per interaction, each importing only those below it: `common`, `time` and
//! `params` at the bottom; `read` over them; `write` over `read`; `bundle` over `write`;
//! `search`, `consent`, `provenance` and `audit` beside them; `discovery` alone; this module
//! only routes. Sessions are `crate::session`, submission `crate::submit`.

mod audit;
mod bundle;
mod common;
mod consent;
mod discovery;
mod params;
mod provenance;
mod read;
mod search;
mod time;
mod write;

use self::{
    audit::audit_events,
    bundle::bundle,
    consent::{consent_create, consent_read, consent_search, consent_update},
    discovery::{metadata, smart_configuration},
    provenance::{provenance_read, provenance_search},
    read::{instance_operation, read, vread},
    search::search,
    write::{create, update},
};
use crate::ApiState;
use axum::{
    Router,
    routing::{get, post},
};
use commonware_runtime::Blob;
use std::sync::Arc;

pub fn routes<B: Blob>() -> Router<Arc<ApiState<B>>> {
    Router::new()
        .route(
            "/.well-known/smart-configuration",
            get(smart_configuration::<B>),
        )
        // SMART discovery lives under the FHIR base URL (SMART App Launch 2.x, 2.1).
        .route(
            "/fhir/.well-known/smart-configuration",
            get(smart_configuration::<B>),
        )
        .route("/auth/token", post(crate::login::token::<B>))
        .route("/fhir/metadata", get(metadata::<B>))
        .route("/fhir", post(bundle::<B>))
        .route("/fhir/AuditEvent", get(audit_events::<B>))
        .route(
            "/fhir/Consent",
            post(consent_create::<B>).get(consent_search::<B>),
        )
        .route(
            "/fhir/Consent/{id}",
            get(consent_read::<B>).put(consent_update::<B>),
        )
        .route("/fhir/{kind}", post(create::<B>).get(search::<B>))
        .route("/fhir/{kind}/{id}", get(read::<B>).put(update::<B>))
        .route("/fhir/Provenance", get(provenance_search::<B>))
        .route("/fhir/Provenance/{id}", get(provenance_read::<B>))
        .route(
            "/fhir/{kind}/{id}/{operation}",
            get(instance_operation::<B>),
        )
        .route("/fhir/{kind}/{id}/_history/{vid}", get(vread::<B>))
        .layer(axum::extract::DefaultBodyLimit::disable())
}
