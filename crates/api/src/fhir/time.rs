//! FHIR `instant`s and HTTP dates from and to milliseconds, with no clock and no time zone
//! database.

// ---- time ----------------------------------------------------------------------------------

pub(super) fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

pub(super) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A FHIR `instant`: `2026-11-25T17:00:00.000Z`.
pub fn instant(ms: u64) -> String {
    let days = (ms / 86_400_000) as i64;
    let (y, m, d) = civil(days);
    let rest = ms % 86_400_000;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1_000 % 60,
        rest % 1_000
    )
}

/// An HTTP date (RFC 9110): `Wed, 25 Nov 2026 17:00:00 GMT`.
pub fn http_date(ms: u64) -> String {
    let days = (ms / 86_400_000) as i64;
    let (y, m, d) = civil(days);
    let rest = ms / 1_000 % 86_400;
    const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {d:02} {} {y:04} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[(days + 4).rem_euclid(7) as usize],
        MONTHS[m as usize - 1],
        rest / 3_600,
        rest / 60 % 60,
        rest % 60
    )
}

/// Parse a FHIR date, dateTime or instant (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`, or with
/// `Thh:mm[:ss[.fff]]` and `Z` or `±hh:mm`) into milliseconds, at the start of the period.
pub fn parse_time(text: &str) -> Option<u64> {
    let (date, time) = match text.split_once('T') {
        Some((date, time)) => (date, Some(time)),
        None => (text, None),
    };
    let mut parts = date.split('-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next().map_or(Some(1), |p| p.parse().ok())?;
    let d: u32 = parts.next().map_or(Some(1), |p| p.parse().ok())?;
    if parts.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) || y < 1970 {
        return None;
    }
    let mut ms = days_from_civil(y, m, d) * 86_400_000;
    if let Some(time) = time {
        let (clock, offset_ms) = if let Some(clock) = time.strip_suffix('Z') {
            (clock, 0i64)
        } else if let Some(at) = time.rfind(['+', '-']) {
            let (h, mi) = time[at + 1..].split_once(':')?;
            let sign = if &time[at..at + 1] == "-" { -1 } else { 1 };
            let offset = (h.parse::<i64>().ok()? * 60 + mi.parse::<i64>().ok()?) * 60_000;
            (&time[..at], sign * offset)
        } else {
            (time, 0)
        };
        let mut fields = clock.split(':');
        let h: i64 = fields.next()?.parse().ok()?;
        let mi: i64 = fields.next()?.parse().ok()?;
        let s: f64 = fields.next().map_or(Some(0.0), |s| s.parse().ok())?;
        ms += h * 3_600_000 + mi * 60_000 + (s * 1000.0) as i64 - offset_ms;
    }
    u64::try_from(ms).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_and_format_as_fhir_and_http_want() {
        let ms = parse_time("2026-11-25T17:04:05.123Z").unwrap();
        assert_eq!(instant(ms), "2026-11-25T17:04:05.123Z");
        assert_eq!(http_date(ms), "Wed, 25 Nov 2026 17:04:05 GMT");
        assert_eq!(parse_time("2026-11-25").unwrap(), ms - 61_445_123);
        assert_eq!(parse_time("2026-11-25T19:04:05.123+02:00").unwrap(), ms);
        assert_eq!(instant(0), "1970-01-01T00:00:00.000Z");
        for bad in ["", "2026-13-01", "x", "2026-11-25T", "1969-01-01"] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }
}
