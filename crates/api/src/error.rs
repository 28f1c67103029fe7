//! The API's one error type. Every error carries an HTTP status, a stable
//! [`ErrorCode`](ehrchain_types::ErrorCode) and a message that is safe to show (no PHI, no
//! internals); how it is rendered depends on where it is answered:
//! - the chain and records API: `{"error": message, "code": code}`;
//! - `/fhir`: an `OperationOutcome` whose `issue[0].code` is the FHIR issue type and whose
//!   `issue[0].details.coding` names the stable code under
//!   [`CODE_SYSTEM`](ehrchain_types::error_code::CODE_SYSTEM);
//! - the token endpoint: RFC 6749 §5.2 (`{"error", "error_description"}`, `no-store`), with
//!   the stable code beside them.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use ehrchain_types::{ErrorCode, error_code::CODE_SYSTEM};
use serde_json::{Value, json};

/// `Content-Type` of every FHIR answer.
pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// How an error is rendered.
#[derive(Debug)]
enum Shape {
    Json,
    /// An `OperationOutcome` with this issue type, or with these validation issues.
    Fhir {
        issue: &'static str,
        issues: Option<Value>,
    },
    /// An OAuth error with this `error` value.
    OAuth {
        error: &'static str,
    },
}

/// An API error (see the module docs).
#[derive(Debug)]
pub struct ApiError {
    pub(crate) status: StatusCode,
    code: ErrorCode,
    pub(crate) message: String,
    shape: Shape,
}

impl ApiError {
    /// A JSON error whose stable code follows from its status (`ErrorCode::of_status`).
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code: ErrorCode::of_status(status.as_u16()),
            message: message.into(),
            shape: Shape::Json,
        }
    }

    /// An `OperationOutcome` error with the FHIR issue type `issue`.
    pub fn fhir(status: StatusCode, issue: &'static str, diagnostics: &str) -> Self {
        Self {
            shape: Shape::Fhir {
                issue,
                issues: None,
            },
            ..Self::new(status, diagnostics)
        }
    }

    /// An OAuth error (`invalid_client`, `invalid_request`, ...).
    pub fn oauth(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        Self {
            shape: Shape::OAuth { error },
            ..Self::new(status, description)
        }
    }

    /// The same error with a more precise stable code.
    pub fn with_code(mut self, code: ErrorCode) -> Self {
        self.code = code;
        self
    }

    /// The same error answered as an `OperationOutcome` of issue type `issue` (an error of a
    /// shared helper, met under `/fhir`); its code and message stay.
    pub fn as_fhir(mut self, issue: &'static str) -> Self {
        if !matches!(self.shape, Shape::Fhir { .. }) {
            self.shape = Shape::Fhir {
                issue,
                issues: None,
            };
        }
        self
    }

    /// An `OperationOutcome` of validation issues, answered as it is.
    pub fn with_issues(mut self, outcome: Value) -> Self {
        if let Shape::Fhir { issues, .. } = &mut self.shape {
            *issues = Some(outcome);
        }
        self
    }

    /// The validation issues' `issue` array, to prefix each (a Bundle entry's position).
    pub fn issues_mut(&mut self) -> Option<&mut Vec<Value>> {
        match &mut self.shape {
            Shape::Fhir {
                issues: Some(outcome),
                ..
            } => outcome["issue"].as_array_mut(),
            _ => None,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The OAuth `error` value, for an error of the token endpoint.
    pub fn oauth_error(&self) -> Option<&'static str> {
        match self.shape {
            Shape::OAuth { error } => Some(error),
            _ => None,
        }
    }

    pub fn diagnostics(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self.shape {
            Shape::Json => (
                self.status,
                Json(json!({ "error": self.message, "code": self.code.as_str() })),
            )
                .into_response(),
            Shape::Fhir { issue, issues } => {
                let coding = json!([{"system": CODE_SYSTEM, "code": self.code.as_str()}]);
                let body = match issues {
                    Some(mut outcome) => {
                        if let Some(first) = outcome["issue"]
                            .as_array_mut()
                            .and_then(|issues| issues.first_mut())
                        {
                            first["details"]["coding"] = coding;
                        }
                        outcome
                    }
                    None => json!({
                        "resourceType": "OperationOutcome",
                        "issue": [{
                            "severity": "error",
                            "code": issue,
                            "details": {"coding": coding},
                            "diagnostics": self.message,
                        }],
                    }),
                };
                let mut response = (self.status, Json(body)).into_response();
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
                response
            }
            Shape::OAuth { error } => (
                self.status,
                [(header::CACHE_CONTROL, "no-store")],
                Json(json!({
                    "error": error,
                    "error_description": self.message,
                    "code": self.code.as_str(),
                })),
            )
                .into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(error: ApiError) -> (StatusCode, Value) {
        let response = error.into_response();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn one_error_three_renderings_one_code() {
        let (status, json) =
            body(ApiError::new(StatusCode::CONFLICT, "taken").with_code(ErrorCode::NonceTaken))
                .await;
        assert_eq!(status, 409);
        assert_eq!(json, json!({"error": "taken", "code": "nonce-taken"}));
        let (_, outcome) = body(ApiError::fhir(
            StatusCode::NOT_FOUND,
            "not-found",
            "no such",
        ))
        .await;
        assert_eq!(outcome["issue"][0]["code"], "not-found");
        assert_eq!(
            outcome["issue"][0]["details"]["coding"][0]["code"],
            "not-found"
        );
        assert_eq!(
            outcome["issue"][0]["details"]["coding"][0]["system"],
            CODE_SYSTEM
        );
        let (status, oauth) = body(ApiError::oauth(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown identity",
        ))
        .await;
        assert_eq!(status, 401);
        assert_eq!(oauth["error"], "invalid_client");
        assert_eq!(oauth["error_description"], "unknown identity");
        assert_eq!(oauth["code"], "unauthenticated");
    }
}
