//! The pure functions every crate shares for text and time on the wire and in the audit log,
//! so each is written once:
//!
//! - [`truncate`]: cut a text to a number of characters, the cut marked with `…`.
//! - [`now_unix_ms`]: the system clock as Unix milliseconds (what every `*_unix_ms` field holds).
//! - [`rfc3339_ms`]: Unix milliseconds as RFC 3339 UTC with milliseconds, the form audit events
//!   and the CLI show ([`rfc3339_now`]: the same, now).

use std::time::{SystemTime, UNIX_EPOCH};

/// Cuts `text` to at most `max` characters (not bytes), marking a cut with an ellipsis, which
/// counts as one of them. A text that fits is returned whole.
///
/// ```
/// use drover_proto::text::truncate;
/// assert_eq!(truncate("abcd", 3), "ab…");
/// assert_eq!(truncate("ééé", 3), "ééé");
/// ```
pub fn truncate(text: &str, max: u32) -> String {
    let max = max as usize;
    if max == 0 {
        return String::new();
    }
    match text.char_indices().nth(max.saturating_sub(1)) {
        Some((cut, _)) if text[cut..].chars().nth(1).is_some() => format!("{}…", &text[..cut]),
        _ => text.to_owned(),
    }
}

/// Now, by the system clock, as Unix milliseconds; 0 if the clock reads before 1970.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Now, by the system clock, as RFC 3339 UTC with milliseconds.
pub fn rfc3339_now() -> String {
    rfc3339_ms(now_unix_ms())
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds, `2026-11-22T08:59:13.123Z` (Howard
/// Hinnant's `civil_from_days`, in unsigned arithmetic: every date from 1970 to 9999).
pub fn rfc3339_ms(unix_ms: u64) -> String {
    let days = unix_ms / 86_400_000;
    let ms_of_day = unix_ms % 86_400_000;
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let (h, m, s, ms) =
        (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60, ms_of_day / 1000 % 60, ms_of_day % 1000);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_counts_characters_and_marks_the_cut() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcd", 3), "ab…");
        assert_eq!(truncate("ééé", 2), "é…");
        assert_eq!(truncate("", 1), "");
        assert_eq!(truncate("abc", 0), "");
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_795_337_953_123), "2026-11-22T08:59:13.123Z");
        assert_eq!(rfc3339_ms(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_ms(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
        assert!(now_unix_ms() > 1_795_337_953_123);
        assert_eq!(rfc3339_now().len(), 24);
    }
}
