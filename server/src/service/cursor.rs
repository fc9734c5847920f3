//! Which event cursors a log can have handed out.

/// Whether `text` has the shape of a cursor some log hands out: `<n>` (a
/// memory node's log), `<ms>-<seq>-<epoch>` (a Redis stream's entry id and
/// the stream's epoch) or `<ms>-<seq>` (the same from before epochs), each
/// number in decimal without a sign or a leading zero. Anything else
/// (`+5`, `05`, `5-`) was never handed out, though a number parser would
/// take some of it for a cursor.
pub(super) fn is_canonical(text: &str) -> bool {
    let number = |part: &str| {
        (1..=20).contains(&part.len())
            && part.bytes().all(|byte| byte.is_ascii_digit())
            && (part == "0" || !part.starts_with('0'))
    };
    let parts = text.split('-');
    (1..=3).contains(&parts.clone().count()) && parts.into_iter().all(number)
}

#[cfg(test)]
mod tests {
    use super::is_canonical;

    #[test]
    fn only_decimal_numbers_without_sign_or_leading_zero() {
        for cursor in [
            "0",
            "7",
            "1883740190225203200",
            "0-0",
            "1700000000000-12",
            "1700000000000-12-9",
        ] {
            assert!(is_canonical(cursor), "{cursor}");
        }
        for cursor in [
            "", "+5", "05", "-5", "5-", "-", "5-+1", "5-01", "5-1-02", "5-1-2-3", "x", " 5",
        ] {
            assert!(!is_canonical(cursor), "{cursor:?}");
        }
        assert!(!is_canonical(&"9".repeat(21)));
    }
}
