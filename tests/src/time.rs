//! Wall-clock time as the API writes it: RFC 3339 timestamps (parsed by
//! `humantime`) and milliseconds since the Unix epoch.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch of an RFC 3339 UTC timestamp such as
/// `2026-11-25T09:31:29.058Z`; panics on anything else.
pub fn rfc3339_ms(text: &str) -> u64 {
    let time = humantime::parse_rfc3339(text)
        .unwrap_or_else(|err| panic!("not an RFC 3339 UTC timestamp ({err}): {text:?}"));
    unix_ms(time)
}

/// Milliseconds since the Unix epoch of `time` (0 before it).
pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// This machine's clock, in ms since the Unix epoch.
pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_stamps_of_the_api_parse_to_their_milliseconds() {
        assert_eq!(rfc3339_ms("1970-01-01T00:00:00Z"), 0);
        assert_eq!(rfc3339_ms("2026-11-25T09:31:29.058Z"), 1_795_599_089_058);
        assert_eq!(rfc3339_ms("2000-02-29T23:59:59.5Z"), 951_868_799_500);
    }
}
