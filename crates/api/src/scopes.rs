//! SMART scopes: what a token may do, on top of what the chain lets its identity do.
//!
//! A token is granted the scopes it asked for (SMART App Launch 2.x, "Scopes for requesting
//! FHIR resources"), v2 syntax `system/Observation.rs`, `user/*.cruds`, `patient/*.rs`, and
//! the v1 forms `.read`, `.write`, `.*`. Each FHIR request needs one permission on one type
//! ([`needed`]); a token without it gets 403 `insufficient_scope` before the handler runs, and
//! the on-chain consent rules still decide whether the identity itself may. Both must allow.
//!
//! Assumptions: `patient/` scopes need a patient context, which a Backend Services login has
//! only when the identity is a patient (or guardian), whose own compartment it is, and a SMART
//! login also when the person picked a patient on the consent page; without one they are
//! refused (`invalid_scope`). What only `patient/` scopes allow ([`Scopes::confined`]) holds
//! for that patient alone (`Token::within`). Granular scopes (`?category=...`) are refused, not
//! widened. Identity scopes a Backend Services token cannot carry (`openid`, `fhirUser`,
//! `launch/...`, `offline_access`) are left out of the grant, which the `scope` answer shows.
//! A request naming no scope gets [`DEFAULT`], the whole of what the identity may do.

use axum::http::Method;

/// Create, read, update, delete, search: the v2 permission letters, in their required order.
pub const CREATE: u8 = 1;
pub const READ: u8 = 2;
pub const UPDATE: u8 = 4;
pub const DELETE: u8 = 8;
pub const SEARCH: u8 = 16;
const ALL: u8 = CREATE | READ | UPDATE | DELETE | SEARCH;
const LETTERS: [(char, u8); 5] = [
    ('c', CREATE),
    ('r', READ),
    ('u', UPDATE),
    ('d', DELETE),
    ('s', SEARCH),
];

/// What a token gets when its request names no scope.
pub const DEFAULT: &str = "system/*.cruds";

/// Most scopes one request may name, and the longest scope string read.
pub const SCOPES_MAX: usize = 64;
pub const SCOPE_TEXT_BYTES_MAX: usize = 4096;

/// The FHIR types a scope may name: the stored types and the three the chain serves itself.
pub fn is_scoped_type(name: &str) -> bool {
    ehrchain_fhir::ResourceType::from_name(name).is_some()
        || matches!(name, "Consent" | "AuditEvent" | "Provenance")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Context {
    Patient,
    User,
    System,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Scope {
    context: Context,
    /// `None` for `*`.
    kind: Option<String>,
    permissions: u8,
}

/// The resource scopes a token holds, and their text as granted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scopes {
    granted: Vec<Scope>,
    text: String,
}

impl Scopes {
    /// Parse a space-separated scope request. `has_patient_context` says whether `patient/`
    /// scopes have a patient to mean. The error names the first scope refused.
    pub fn parse(request: Option<&str>, has_patient_context: bool) -> Result<Self, String> {
        let request = request.map(str::trim).filter(|r| !r.is_empty());
        let request = request.unwrap_or(DEFAULT);
        if request.len() > SCOPE_TEXT_BYTES_MAX {
            return Err(format!(
                "the scope is longer than {SCOPE_TEXT_BYTES_MAX} bytes"
            ));
        }
        let mut granted = Vec::new();
        let mut kept = Vec::new();
        for (count, scope) in request.split_ascii_whitespace().enumerate() {
            if count >= SCOPES_MAX {
                return Err(format!("more than {SCOPES_MAX} scopes"));
            }
            if matches!(
                scope,
                "openid" | "fhirUser" | "profile" | "offline_access" | "online_access"
            ) || scope.starts_with("launch")
            {
                continue;
            }
            let parsed = parse_one(scope)
                .ok_or_else(|| format!("scope {scope:?} is not a SMART resource scope"))?;
            if parsed.0 == Context::Patient && !has_patient_context {
                return Err(format!(
                    "scope {scope:?} needs a patient context: a patient's own login, or a patient picked at login"
                ));
            }
            granted.push(parsed.1);
            kept.push(scope);
        }
        if granted.is_empty() {
            return Err("no resource scope was asked for".into());
        }
        Ok(Self {
            granted,
            text: kept.join(" "),
        })
    }

    /// The scopes as granted, for the token answer's `scope`.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether some scope allows `permission` on `kind`.
    pub fn allows(&self, kind: &str, permission: u8) -> bool {
        self.granted.iter().any(|s| {
            s.permissions & permission == permission && s.kind.as_deref().is_none_or(|k| k == kind)
        })
    }

    /// Whether `permission` on `kind` is granted only by `patient/` scopes: then it holds
    /// for the login's patient alone (SMART: a patient scope is about the patient in context).
    pub fn confined(&self, kind: &str, permission: u8) -> bool {
        let allowing = |s: &&Scope| {
            s.permissions & permission == permission && s.kind.as_deref().is_none_or(|k| k == kind)
        };
        let mut allowed = self.granted.iter().filter(allowing).peekable();
        allowed.peek().is_some() && allowed.all(|s| s.context == Context::Patient)
    }

    /// Whether every permission on every type is granted: what the chain's own API (outside
    /// `/fhir`, where requests are not typed) requires.
    pub fn is_full(&self) -> bool {
        self.granted
            .iter()
            .any(|s| s.kind.is_none() && s.permissions == ALL)
    }
}

fn parse_one(scope: &str) -> Option<(Context, Scope)> {
    let (context, rest) = scope.split_once('/')?;
    let context = match context {
        "patient" => Context::Patient,
        "user" => Context::User,
        "system" => Context::System,
        _ => return None,
    };
    let (kind, permissions) = rest.split_once('.')?;
    let kind = match kind {
        "*" => None,
        name if is_scoped_type(name) => Some(name.to_owned()),
        _ => return None,
    };
    let permissions = match permissions {
        "read" => READ | SEARCH,
        "write" => CREATE | UPDATE | DELETE,
        "*" => ALL,
        letters => {
            // Each letter at most once, in c r u d s order (SMART 2.x, 3.0.2.1).
            let mut bits = 0;
            let mut next = 0;
            for ch in letters.chars() {
                let position = LETTERS[next..].iter().position(|(l, _)| *l == ch)? + next;
                bits |= LETTERS[position].1;
                next = position + 1;
            }
            if bits == 0 {
                return None;
            }
            bits
        }
    };
    Some((
        context,
        Scope {
            context,
            kind,
            permissions,
        },
    ))
}

/// The type and permission a FHIR request needs, from its method and path, or `None` when it
/// needs none beyond a token: discovery, `$validate` (which stores and reads nothing), and a
/// Bundle at the base (each of its entries is checked as its own request).
pub fn needed(method: &Method, path: &str) -> Option<(String, u8)> {
    let rest = path.strip_prefix("/fhir/")?;
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let kind = *segments.first()?;
    if !is_scoped_type(kind) {
        return None;
    }
    let permission = match (segments.len(), method.as_str()) {
        (_, _)
            if segments.get(1) == Some(&"$validate") || segments.get(2) == Some(&"$validate") =>
        {
            return None;
        }
        (1, "GET") => SEARCH,
        (1, "POST") => CREATE,
        (1, "PUT" | "PATCH") => UPDATE,
        (1, "DELETE") => DELETE,
        (2, "POST") if segments[1] == "_search" => SEARCH,
        (2, "GET") if segments[1] == "_history" => READ,
        (2, "GET") => READ,
        (2, "PUT" | "PATCH") => UPDATE,
        (2, "DELETE") => DELETE,
        // A compartment search (`Patient/{id}/Observation`) is a search of that type.
        (3, "GET") if kind == "Patient" && is_scoped_type(segments[2]) => {
            return Some((segments[2].to_owned(), SEARCH));
        }
        // `_history`, `_history/{vid}`, `$everything` (whose other types are filtered by scope).
        (3 | 4, "GET" | "POST") => READ,
        _ => return None,
    };
    Some((kind.to_owned(), permission))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_and_v1_scopes() {
        let scopes = Scopes::parse(
            Some("system/Observation.rs system/Condition.c openid"),
            false,
        )
        .unwrap();
        assert_eq!(scopes.text(), "system/Observation.rs system/Condition.c");
        assert!(scopes.allows("Observation", READ) && scopes.allows("Observation", SEARCH));
        assert!(!scopes.allows("Observation", CREATE) && !scopes.allows("Patient", READ));
        assert!(scopes.allows("Condition", CREATE) && !scopes.allows("Condition", READ));
        assert!(!scopes.is_full());
        let v1 = Scopes::parse(Some("user/*.read"), false).unwrap();
        assert!(
            v1.allows("Patient", READ)
                && v1.allows("AuditEvent", SEARCH)
                && !v1.allows("Patient", UPDATE)
        );
        assert!(Scopes::parse(None, false).unwrap().is_full());
        assert!(Scopes::parse(Some("system/*.*"), false).unwrap().is_full());
    }

    #[test]
    fn refused_scopes_are_named() {
        for bad in [
            "system/Observation.sr",
            "system/Observation.rr",
            "system/Observation.x",
            "system/Spaceship.rs",
            "system/Observation.rs?category=vital-signs",
            "admin/*.rs",
            "openid",
        ] {
            assert!(Scopes::parse(Some(bad), false).is_err(), "{bad}");
        }
        assert!(
            Scopes::parse(Some("patient/*.rs"), false)
                .unwrap_err()
                .contains("patient context")
        );
        assert!(Scopes::parse(Some("patient/*.cruds"), true).is_ok());
    }

    #[test]
    fn patient_scopes_alone_confine_to_the_patient_in_context() {
        let mixed = Scopes::parse(Some("patient/*.rs user/Condition.rs"), true).unwrap();
        assert!(mixed.confined("Observation", READ));
        assert!(!mixed.confined("Condition", READ));
        // Not allowed at all is not "confined": the scope check refuses it first.
        assert!(!mixed.confined("Observation", CREATE));
        let user = Scopes::parse(Some("user/*.rs"), false).unwrap();
        assert!(!user.confined("Observation", READ));
    }

    #[test]
    fn each_interaction_needs_its_letter() {
        let get = Method::GET;
        assert_eq!(
            needed(&get, "/fhir/Observation"),
            Some(("Observation".into(), SEARCH))
        );
        assert_eq!(
            needed(&get, "/fhir/Observation/ab"),
            Some(("Observation".into(), READ))
        );
        assert_eq!(
            needed(&get, "/fhir/Observation/ab/_history/2"),
            Some(("Observation".into(), READ))
        );
        assert_eq!(
            needed(&Method::POST, "/fhir/Observation"),
            Some(("Observation".into(), CREATE))
        );
        assert_eq!(
            needed(&Method::PUT, "/fhir/Observation/ab"),
            Some(("Observation".into(), UPDATE))
        );
        assert_eq!(
            needed(&Method::PATCH, "/fhir/Observation/ab"),
            Some(("Observation".into(), UPDATE))
        );
        assert_eq!(
            needed(&Method::DELETE, "/fhir/Observation/ab"),
            Some(("Observation".into(), DELETE))
        );
        assert_eq!(
            needed(&Method::POST, "/fhir/Observation/_search"),
            Some(("Observation".into(), SEARCH))
        );
        assert_eq!(
            needed(&get, "/fhir/Patient/p/$everything"),
            Some(("Patient".into(), READ))
        );
        // A compartment search needs the searched type's scope, not Patient's.
        assert_eq!(
            needed(&get, "/fhir/Patient/p/Observation"),
            Some(("Observation".into(), SEARCH))
        );
        assert_eq!(
            needed(&get, "/fhir/AuditEvent"),
            Some(("AuditEvent".into(), SEARCH))
        );
        assert_eq!(needed(&Method::POST, "/fhir/Observation/$validate"), None);
        assert_eq!(needed(&Method::POST, "/fhir/"), None);
        assert_eq!(needed(&get, "/fhir/metadata"), None);
    }
}
