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
//! `params` at the bottom; `read` over them; `search` over `read`; `write` over `search`
//! (conditional create and update search first); `bundle` over `write`, and
//! `batch` (each entry sent through this router) beside it; `consent`,
//! `provenance` and `audit` beside them; `discovery` over `search` (it lists the search
//! parameters `search` serves); this module routes and negotiates the format. Sessions are `crate::session`, submission `crate::submit`.

mod audit;
mod batch;
mod bundle;
mod common;
mod consent;
mod discovery;
pub mod index;
mod params;
mod provenance;
mod read;
pub(crate) use read::{SEALED_PAGE_MAX, sealed};
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
    write::{conditional_update, create, delete, patch, update, validate_operation},
};
use crate::{ApiError, ApiState};
use axum::{
    Router,
    extract::Request,
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse as _, Response},
    routing::{get, post},
};
use commonware_runtime::Blob;
use std::sync::Arc;

/// The FHIR router. `state` is the node's, for the scope check every request passes first.
pub fn routes<B: Blob>(state: Arc<ApiState<B>>) -> Router<Arc<ApiState<B>>> {
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
        // fhir-kit-client and others post transactions to the base URL with a trailing slash.
        .route("/fhir/", post(bundle::<B>))
        .route("/fhir/AuditEvent", get(audit_events::<B>))
        .route(
            "/fhir/Consent",
            post(consent_create::<B>).get(consent_search::<B>),
        )
        .route(
            "/fhir/Consent/{id}",
            get(consent_read::<B>).put(consent_update::<B>),
        )
        .route(
            "/fhir/{kind}",
            post(create::<B>)
                .get(search::<B>)
                .put(conditional_update::<B>),
        )
        .route(
            "/fhir/{kind}/{id}",
            get(read::<B>)
                .put(update::<B>)
                .patch(patch::<B>)
                .delete(delete::<B>)
                .post(validate_operation::<B>),
        )
        .route("/fhir/Provenance", get(provenance_search::<B>))
        .route("/fhir/Provenance/{id}", get(provenance_read::<B>))
        .route(
            "/fhir/{kind}/{id}/{operation}",
            get(instance_operation::<B>).post(instance_operation::<B>),
        )
        .route("/fhir/{kind}/{id}/_history/{vid}", get(vread::<B>))
        .fallback(unknown_path)
        .layer(axum::middleware::from_fn_with_state(
            state,
            require_scope::<B>,
        ))
        .layer(axum::middleware::from_fn(negotiate))
        .layer(axum::extract::DefaultBodyLimit::disable())
}

/// Refuse a request its token's scopes do not cover (403 `insufficient_scope`), before any
/// handler runs: a batch entry comes through here too. A request without a live token goes
/// on, and its handler answers 401.
async fn require_scope<B: Blob>(
    axum::extract::State(state): axum::extract::State<Arc<ApiState<B>>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some((kind, permission)) = crate::scopes::needed(request.method(), request.uri().path())
        && let Ok(token) = crate::session::caller(&state, request.headers())
        && !token.scopes.allows(&kind, permission)
    {
        let mut response = insufficient_scope(&kind, permission).into_response();
        // RFC 6750 3: the challenge names the error, for clients that read headers only.
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer error=\"insufficient_scope\""),
        );
        return response;
    }
    next.run(request).await
}

/// 403 for a token whose scopes lack `permission` on `kind`, naming both.
pub(crate) fn insufficient_scope(kind: &str, permission: u8) -> ApiError {
    let letter = match permission {
        crate::scopes::CREATE => "c",
        crate::scopes::READ => "r",
        crate::scopes::UPDATE => "u",
        crate::scopes::DELETE => "d",
        _ => "s",
    };
    ApiError::fhir(
        StatusCode::FORBIDDEN,
        "forbidden",
        &format!("insufficient_scope: the token has no scope granting {kind}.{letter}"),
    )
}

/// A path the node does not serve: under `/fhir` an `OperationOutcome`, elsewhere the API's
/// JSON error (this router's fallback is the whole node's).
async fn unknown_path(uri: axum::http::Uri) -> ApiError {
    if uri.path() == "/fhir" || uri.path().starts_with("/fhir/") {
        common::not_found("no FHIR interaction at this path; see /fhir/metadata")
    } else {
        ApiError::new(StatusCode::NOT_FOUND, "no such endpoint")
    }
}

/// The media ranges of `accept` that JSON satisfies.
fn accepts_json(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let media = range
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        matches!(
            media.as_str(),
            "" | "*/*"
                | "application/*"
                | "application/json"
                | "application/fhir+json"
                | "application/json+fhir"
        )
    })
}

/// `_format`, if given, or else `Accept` must let the answer be JSON: anything else (XML,
/// Turtle, HTML) is answered 406 rather than with JSON the client did not ask for. Errors the
/// router makes itself (405 for a method a path does not take) become `OperationOutcome`s.
async fn negotiate(request: Request, next: Next) -> Response {
    let format = request.uri().query().and_then(|query| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(query)
            .ok()?
            .into_iter()
            .find(|(k, _)| k == "_format")
            .map(|(_, v)| v)
    });
    let wanted = match &format {
        Some(format) => matches!(
            format.as_str(),
            "json" | "application/json" | "application/fhir+json"
        ),
        None => request
            .headers()
            .get_all(header::ACCEPT)
            .iter()
            .all(|v| v.to_str().is_ok_and(accepts_json)),
    };
    if !wanted {
        return ApiError::fhir(
            StatusCode::NOT_ACCEPTABLE,
            "not-supported",
            "only FHIR JSON (application/fhir+json) is served; XML is not",
        )
        .into_response();
    }
    let response = next.run(request).await;
    if response.status() == StatusCode::METHOD_NOT_ALLOWED
        && !response.headers().contains_key(header::CONTENT_TYPE)
    {
        let allow = response.headers().get(header::ALLOW).cloned();
        let mut outcome = ApiError::fhir(
            StatusCode::METHOD_NOT_ALLOWED,
            "not-supported",
            "this interaction is not supported at this path; see /fhir/metadata",
        )
        .into_response();
        if let Some(allow) = allow {
            outcome.headers_mut().insert(header::ALLOW, allow);
        }
        return outcome;
    }
    let mut response = response;
    // Health data must not outlive the token that read it: a browser would otherwise keep a
    // response (heuristically, from its Last-Modified) and serve it again after revocation.
    response
        .headers_mut()
        .entry(header::CACHE_CONTROL)
        .or_insert(axum::http::HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::accepts_json;

    #[test]
    fn json_is_served_to_whoever_accepts_it_and_no_one_else() {
        for accept in [
            "",
            "*/*",
            "application/fhir+json",
            "application/fhir+json; fhirVersion=4.0",
            "application/json, text/plain",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ] {
            assert!(accepts_json(accept), "{accept}");
        }
        for accept in [
            "application/fhir+xml",
            "application/xml",
            "text/turtle",
            "text/html",
        ] {
            assert!(!accepts_json(accept), "{accept}");
        }
    }
}
