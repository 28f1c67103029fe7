//! Discovery: the SMART configuration and the `CapabilityStatement` (`/fhir/metadata`).

use super::{common::fhir_json, search::search_params, time::instant};
use crate::{ApiState, ambient::now_ms};
use axum::{Json, extract::State, http::StatusCode, response::Response};
use commonware_runtime::Blob;
use ehrchain_fhir::ResourceType;
use serde_json::{Value, json};
use std::sync::Arc;

// ---- discovery -----------------------------------------------------------------------------

pub(super) async fn smart_configuration<B: Blob>(
    State(state): State<Arc<ApiState<B>>>,
) -> Json<Value> {
    let gateway = &state.gateway;
    let browser = gateway.browser_url();
    Json(json!({
        "issuer": format!("{}/fhir", gateway.public_url),
        "jwks_uri": format!("{}/auth/jwks", gateway.public_url),
        // The page people log in on: at a name (not a loopback IP), for passkeys.
        "authorization_endpoint": format!("{browser}/auth/authorize"),
        "token_endpoint": gateway.token_url(),
        "revocation_endpoint": format!("{}/auth/revoke", gateway.public_url),
        "introspection_endpoint": format!("{}/auth/introspect", gateway.public_url),
        "management_endpoint": format!("{browser}/auth/sessions"),
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": ["EdDSA", "RS384", "ES384"],
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        // SMART v2 resource scopes (and their v1 forms), for any stored or served type.
        "scopes_supported": [
            "openid", "fhirUser", "launch/patient", "offline_access", "online_access",
            "system/*.cruds", "system/*.rs", "user/*.cruds", "user/*.rs", "patient/*.cruds",
            "patient/*.rs", "patient/Observation.rs", "patient/Patient.rs",
            "system/*.read", "system/*.write", "system/*.*",
        ],
        "capabilities": [
            "launch-standalone", "client-public", "client-confidential-asymmetric",
            "context-standalone-patient", "sso-openid-connect", "permission-v2",
            "permission-v1", "permission-patient", "permission-user", "permission-offline",
            "permission-online",
        ],
    }))
}

pub(super) async fn metadata<B: Blob>(State(state): State<Arc<ApiState<B>>>) -> Response {
    let mut resources: Vec<Value> = ResourceType::ALL
        .iter()
        .map(|t| {
            json!({
                "type": t.name(),
                "interaction": [
                    {"code": "read"}, {"code": "vread"}, {"code": "update"}, {"code": "patch"},
                    {"code": "delete"},
                    {"code": "history-instance"}, {"code": "create"}, {"code": "search-type"},
                ],
                "documentation": "A search is scoped to one patient: patient= or subject=, or _id= (the patient of the records it names); a patient's own searches default to themselves.",
                "versioning": "versioned",
                "readHistory": true,
                "updateCreate": false,
                "conditionalCreate": true,
                "conditionalUpdate": true,
                "conditionalRead": "not-match",
                "conditionalDelete": "not-supported",
                "operation": [{
                    "name": "validate",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
                }],
                "searchParam": search_params(*t).iter().map(|p| json!({
                    "name": p.name,
                    "type": p.kind,
                    "definition": p.definition,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    if let Some(patient) = resources.first_mut()
        && let Some(operations) = patient["operation"].as_array_mut()
    {
        operations.push(json!({
            "name": "everything",
            "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
        }));
    }
    resources.push(json!({
        "type": "Provenance",
        "interaction": [{"code": "read"}, {"code": "search-type"}],
        "searchParam": [{"name": "target", "type": "reference", "definition": "http://hl7.org/fhir/SearchParameter/Provenance-target", "documentation": "{type}/{id}: one Provenance per version, with its inclusion proof"}],
    }));
    resources.push(json!({
        "type": "Consent",
        "interaction": [{"code": "create"}, {"code": "read"}, {"code": "update"}, {"code": "search-type"}],
        "searchParam": [{"name": "patient", "type": "reference", "definition": "http://hl7.org/fhir/SearchParameter/clinical-patient"}],
    }));
    resources.push(json!({
        "type": "AuditEvent",
        "interaction": [{"code": "search-type"}],
        "searchParam": [{"name": "patient", "type": "reference", "definition": "http://hl7.org/fhir/SearchParameter/AuditEvent-patient"}],
    }));
    let statement = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": instant(now_ms())[..10],
        "publisher": "ehrchain",
        "kind": "instance",
        "software": {"name": "ehrchain", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "ehrchain node", "url": format!("{}/fhir", state.gateway.public_url)},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "security": {
                "service": [{"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                    "code": "SMART-on-FHIR",
                }]}],
                "description": "SMART App Launch (authorization code with PKCE S256, for apps registered on chain) and SMART Backend Services (a JWT client assertion: EdDSA with the identity key, or RS384/ES384 with a client key registered on chain)",
                "extension": [{
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [
                        {"url": "token", "valueUri": state.gateway.token_url()},
                        {"url": "authorize", "valueUri": format!("{}/auth/authorize", state.gateway.browser_url())},
                        {"url": "revoke", "valueUri": format!("{}/auth/revoke", state.gateway.public_url)},
                        {"url": "introspect", "valueUri": format!("{}/auth/introspect", state.gateway.public_url)},
                    ],
                }],
            },
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
            // `Patient/{id}/{type}` searches the patient's compartment.
            "compartment": ["http://hl7.org/fhir/CompartmentDefinition/patient"],
        }],
    });
    fhir_json(StatusCode::OK, &statement)
}
