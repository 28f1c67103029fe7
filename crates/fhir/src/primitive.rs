//! The lexical rules of the R4 primitive types (FHIR R4 "Data Types", 2.24.0.1), checked on
//! the JSON value as parsed. The regular expressions of the specification are written out as
//! small matchers; dates are also checked against the calendar (`2026-02-30` is refused,
//! which the regular expression alone would accept).

use serde_json::Value;

/// An R4 primitive type, by its name in the StructureDefinitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Primitive {
    Boolean,
    Integer,
    PositiveInt,
    UnsignedInt,
    Decimal,
    String,
    Markdown,
    Code,
    Id,
    Uri,
    Oid,
    Uuid,
    Base64Binary,
    Date,
    DateTime,
    Instant,
    Time,
    Xhtml,
}

impl Primitive {
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "boolean" => Self::Boolean,
            "integer" => Self::Integer,
            "positiveInt" => Self::PositiveInt,
            "unsignedInt" => Self::UnsignedInt,
            "decimal" => Self::Decimal,
            "string" => Self::String,
            "markdown" => Self::Markdown,
            "code" => Self::Code,
            "id" => Self::Id,
            "uri" | "url" | "canonical" => Self::Uri,
            "oid" => Self::Oid,
            "uuid" => Self::Uuid,
            "base64Binary" => Self::Base64Binary,
            "date" => Self::Date,
            "dateTime" => Self::DateTime,
            "instant" => Self::Instant,
            "time" => Self::Time,
            "xhtml" => Self::Xhtml,
            _ => return None,
        })
    }

    /// Why `value` is not a valid value of this type, or `None` when it is. The reason never
    /// quotes the value (it may be PHI). Empty strings are left to [`crate::raw::lint`].
    pub(crate) fn check(self, value: &Value) -> Option<&'static str> {
        match self {
            Self::Boolean => (!value.is_boolean()).then_some("must be true or false"),
            Self::Integer => integer(value, i64::from(i32::MIN)),
            Self::PositiveInt => integer(value, 1),
            Self::UnsignedInt => integer(value, 0),
            Self::Decimal => (!value.is_number()).then_some("must be a JSON number"),
            _ => {
                let Some(text) = value.as_str() else {
                    return Some("must be a JSON string");
                };
                if text.is_empty() {
                    return None;
                }
                self.text(text)
            }
        }
    }

    fn text(self, text: &str) -> Option<&'static str> {
        let ok = match self {
            Self::String | Self::Markdown => true,
            Self::Code => is_code(text),
            Self::Id => crate::is_valid_id(text),
            Self::Uri => !text.chars().any(char::is_whitespace),
            Self::Oid => is_oid(text),
            Self::Uuid => is_uuid(text),
            Self::Base64Binary => is_base64(text),
            Self::Date => is_date(text),
            Self::DateTime => is_date_time(text),
            Self::Instant => is_instant(text),
            Self::Time => is_time(text.as_bytes()),
            Self::Xhtml => text.trim_start().starts_with("<div"),
            Self::Boolean | Self::Integer | Self::PositiveInt | Self::UnsignedInt => true,
            Self::Decimal => true,
        };
        (!ok).then_some(match self {
            Self::Code => "must be a code: no leading, trailing or double whitespace",
            Self::Id => "must be an id: 1 to 64 of A-Z a-z 0-9 - .",
            Self::Uri => "must be a uri: no whitespace",
            Self::Oid => "must be an oid: urn:oid: then dotted numbers",
            Self::Uuid => "must be a uuid: urn:uuid: then a lower-case RFC 4122 UUID",
            Self::Base64Binary => "must be base64",
            Self::Date => "must be a date: YYYY, YYYY-MM or YYYY-MM-DD, on the calendar",
            Self::DateTime => {
                "must be a dateTime: a date, or YYYY-MM-DDThh:mm:ss with a time zone, on the calendar"
            }
            Self::Instant => "must be an instant: YYYY-MM-DDThh:mm:ss with a time zone",
            Self::Time => "must be a time: hh:mm:ss",
            Self::Xhtml => "must be an XHTML div",
            _ => "is not valid",
        })
    }
}

fn integer(value: &Value, min: i64) -> Option<&'static str> {
    match value.as_i64() {
        Some(n) if n >= min && n <= i64::from(i32::MAX) => None,
        Some(_) => Some("is out of range for its integer type"),
        None if value.is_u64() => Some("is out of range for its integer type"),
        None => Some("must be a JSON integer"),
    }
}

fn is_code(text: &str) -> bool {
    // [^\s]+(\s[^\s]+)*
    !text.starts_with(char::is_whitespace)
        && !text.ends_with(char::is_whitespace)
        && !text
            .as_bytes()
            .windows(2)
            .any(|w| w[0].is_ascii_whitespace() && w[1].is_ascii_whitespace())
}

fn is_oid(text: &str) -> bool {
    // urn:oid:[0-2](\.(0|[1-9][0-9]*))+
    let Some(rest) = text.strip_prefix("urn:oid:") else {
        return false;
    };
    let mut arcs = rest.split('.');
    let first = arcs.next().unwrap_or("");
    let mut count = 0;
    let digits = |arc: &str| {
        !arc.is_empty()
            && arc.bytes().all(|b| b.is_ascii_digit())
            && (arc == "0" || !arc.starts_with('0'))
    };
    if !matches!(first, "0" | "1" | "2") {
        return false;
    }
    for arc in arcs {
        if !digits(arc) {
            return false;
        }
        count += 1;
    }
    count > 0
}

fn is_uuid(text: &str) -> bool {
    let Some(rest) = text.strip_prefix("urn:uuid:") else {
        return false;
    };
    let bytes = rest.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(b),
        })
}

fn is_base64(text: &str) -> bool {
    let mut count = 0usize;
    let mut padding = 0usize;
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/' if padding == 0 => count += 1,
            b'=' if padding < 2 => {
                padding += 1;
                count += 1;
            }
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ => return false,
        }
    }
    count.is_multiple_of(4)
}

fn digits(bytes: &[u8], from: usize, len: usize) -> Option<u32> {
    let part = bytes.get(from..from + len)?;
    if !part.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(part.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        _ => 31,
    }
}

/// The length of the date at the start of `bytes` (4, 7 or 10), if it is one.
fn date_prefix(bytes: &[u8]) -> Option<usize> {
    let year = digits(bytes, 0, 4)?;
    if year == 0 {
        return None;
    }
    if bytes.len() == 4 || bytes.get(4) != Some(&b'-') {
        return Some(4);
    }
    let month = digits(bytes, 5, 2)?;
    if !(1..=12).contains(&month) {
        return None;
    }
    if bytes.len() == 7 || bytes.get(7) != Some(&b'-') {
        return Some(7);
    }
    let day = digits(bytes, 8, 2)?;
    if day == 0 || day > days_in_month(year, month) {
        return None;
    }
    Some(10)
}

/// `hh:mm:ss(.s+)?` with hour 00-23, minute 00-59, second 00-60 (a leap second).
fn is_time(bytes: &[u8]) -> bool {
    let (Some(h), Some(m), Some(s)) = (
        digits(bytes, 0, 2),
        digits(bytes, 3, 2),
        digits(bytes, 6, 2),
    ) else {
        return false;
    };
    if bytes.get(2) != Some(&b':') || bytes.get(5) != Some(&b':') || h > 23 || m > 59 || s > 60 {
        return false;
    }
    match bytes.get(8..) {
        Some([]) => true,
        Some([b'.', rest @ ..]) => !rest.is_empty() && rest.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

/// A time zone: `Z` or `+hh:mm`/`-hh:mm` (up to 14:00).
fn is_zone(bytes: &[u8]) -> bool {
    match bytes {
        [b'Z'] => true,
        [b'+' | b'-', rest @ ..] if rest.len() == 5 && rest[2] == b':' => {
            match (digits(rest, 0, 2), digits(rest, 3, 2)) {
                (Some(h), Some(m)) => h < 14 && m < 60 || h == 14 && m == 0,
                _ => false,
            }
        }
        _ => false,
    }
}

/// `YYYY`, `YYYY-MM` or `YYYY-MM-DD`, on the calendar.
pub fn is_date(text: &str) -> bool {
    date_prefix(text.as_bytes()) == Some(text.len())
}

/// A date, or a full date with `Thh:mm:ss(.s+)?` and a zone.
pub fn is_date_time(text: &str) -> bool {
    let bytes = text.as_bytes();
    match date_prefix(bytes) {
        Some(n) if n == bytes.len() => true,
        Some(10) => bytes[10] == b'T' && time_and_zone(&bytes[11..]),
        _ => false,
    }
}

/// A full date with `Thh:mm:ss(.s+)?` and a zone.
pub fn is_instant(text: &str) -> bool {
    let bytes = text.as_bytes();
    date_prefix(bytes) == Some(10) && bytes.get(10) == Some(&b'T') && time_and_zone(&bytes[11..])
}

fn time_and_zone(bytes: &[u8]) -> bool {
    let zone = bytes
        .iter()
        .position(|b| matches!(b, b'Z' | b'+' | b'-'))
        .unwrap_or(bytes.len());
    is_time(&bytes[..zone]) && is_zone(&bytes[zone..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dates_follow_the_calendar() {
        for good in ["2024", "2024-03", "2024-02-29", "2000-02-29", "2026-12-31"] {
            assert!(is_date(good), "{good}");
        }
        for bad in [
            "",
            "0000",
            "24",
            "2024-3-1",
            "2026-13-45",
            "2023-02-29",
            "1900-02-29",
            "2024-04-31",
        ] {
            assert!(!is_date(bad), "{bad}");
        }
        for good in [
            "2024",
            "2024-03-01T10:00:00Z",
            "2024-03-01T10:00:00.5+01:00",
            "2015-02-07T13:28:17-05:00",
            "2016-12-31T23:59:60Z",
        ] {
            assert!(is_date_time(good), "{good}");
        }
        for bad in [
            "2024-03-01T10",
            "2024-03-01T10:00Z",
            "2024-03-01T10:00:00",
            "2024-03-01T24:00:00Z",
            "2024-03-01T10:00:00+15:00",
            "2024-03T10:00:00Z",
            "yesterday",
        ] {
            assert!(!is_date_time(bad), "{bad}");
        }
        assert!(is_instant("2024-03-01T10:00:00.123Z"));
        assert!(!is_instant("2024-03-01"));
        assert!(
            is_time(b"23:59:59")
                && is_time(b"10:00:00.25")
                && !is_time(b"10:00")
                && !is_time(b"25:00:00")
        );
    }

    #[test]
    fn primitives() {
        use Primitive::*;
        let cases = [
            (Integer, json!(2147483647), true),
            (Integer, json!(2147483648u64), false),
            (Integer, json!(-2147483648i64), true),
            (Integer, json!(1.5), false),
            (Integer, json!("1"), false),
            (PositiveInt, json!(0), false),
            (UnsignedInt, json!(0), true),
            (UnsignedInt, json!(-1), false),
            (Decimal, json!(1.50), true),
            (Decimal, json!("1.5"), false),
            (Boolean, json!("true"), false),
            (Code, json!("final"), true),
            (Code, json!(" final"), false),
            (Code, json!("a  b"), false),
            (Code, json!("a b"), true),
            (Id, json!("a.b-1"), true),
            (Id, json!("a_b"), false),
            (Uri, json!("http://loinc.org"), true),
            (Uri, json!("http://x y"), false),
            (Oid, json!("urn:oid:1.2.36.146.595.217.0.1"), true),
            (Oid, json!("urn:oid:3.1"), false),
            (Oid, json!("urn:oid:1"), false),
            (
                Uuid,
                json!("urn:uuid:c757873d-ec9a-4326-a141-556f43239520"),
                true,
            ),
            (
                Uuid,
                json!("urn:uuid:C757873D-ec9a-4326-a141-556f43239520"),
                false,
            ),
            (Base64Binary, json!("SGVsbG8="), true),
            (Base64Binary, json!("SGVsbG8"), false),
            (Base64Binary, json!("SGV*bG8="), false),
            (
                Xhtml,
                json!("<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"),
                true,
            ),
            (Xhtml, json!("plain"), false),
            (String, json!(3), false),
        ];
        for (kind, value, ok) in cases {
            assert_eq!(kind.check(&value).is_none(), ok, "{kind:?} {value}");
        }
    }
}
