//! Wall-clock time as the protocols write it.

use std::time::SystemTime;

/// RFC 3339 / ISO 8601 UTC with milliseconds, e.g. `2026-11-30T03:04:05.678Z`: HLS
/// `EXT-X-PROGRAM-DATE-TIME`, DASH `availabilityStartTime`/`publishTime`, `/api/time`, JSON.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let t: chrono::DateTime<chrono::Utc> = t.into();
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Parse an RFC 3339 time (any offset); `None` when it is not one.
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let t = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    Some(SystemTime::from(t.with_timezone(&chrono::Utc)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn millisecond_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_471_845_678);
        assert_eq!(rfc3339_millis(t), "2025-11-30T03:04:05.678Z");
        assert_eq!(parse_rfc3339("2025-11-30T03:04:05.678Z"), Some(t));
        assert_eq!(parse_rfc3339("2025-11-30T04:04:05.678+01:00"), Some(t));
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
