//! EC2-style resource ids (`vol-` + 17 lowercase hex digits), secrets and timestamps.

use std::time::{SystemTime, UNIX_EPOCH};

/// Number of hex digits after the prefix in current EC2 ids (`vol-0123456789abcdef0`).
pub const RESOURCE_ID_HEX_DIGITS: usize = 17;

/// Fills `buffer` from the operating system's CSPRNG.
///
/// Panics only if the kernel cannot supply randomness, in which case no id or key can be
/// made safely and continuing would be worse than stopping.
pub fn fill_random(buffer: &mut [u8]) {
    getrandom::fill(buffer).expect("the kernel's random number generator is unavailable");
}

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(DIGITS[(byte >> 4) as usize] as char);
        text.push(DIGITS[(byte & 0xf) as usize] as char);
    }
    text
}

/// A fresh id such as `vol-0a1b2c3d4e5f60718`.
pub fn new_resource_id(prefix: &str) -> String {
    let mut random = [0u8; 9];
    fill_random(&mut random);
    let hex = to_hex(&random);
    format!("{prefix}-{}", &hex[..RESOURCE_ID_HEX_DIGITS])
}

/// Whether `id` is `prefix-` followed by 8 (legacy) or 17 lowercase hex digits.
pub fn is_valid_resource_id(prefix: &str, id: &str) -> bool {
    let Some(digits) = id
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('-'))
    else {
        return false;
    };
    (digits.len() == RESOURCE_ID_HEX_DIGITS || digits.len() == 8)
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A random secret of 32 hex digits (128 bits), used for attachment tokens.
pub fn new_secret_token() -> String {
    let mut random = [0u8; 16];
    fill_random(&mut random);
    to_hex(&random)
}

/// Compares two secrets in time independent of where they first differ.
pub fn secrets_equal(left: &str, right: &str) -> bool {
    if left.len() != right.len() {
        return false;
    }
    left.bytes()
        .zip(right.bytes())
        .fold(0u8, |diff, (a, b)| diff | (a ^ b))
        == 0
}

/// The current time as EC2 prints it: `2026-11-25T13:55:23.000Z`.
pub fn now_rfc3339() -> String {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format_rfc3339(since_epoch.as_secs(), since_epoch.subsec_millis())
}

/// Formats seconds since the Unix epoch (UTC) with millisecond precision.
pub fn format_rfc3339(seconds: u64, millis: u32) -> String {
    let days = (seconds / 86_400) as i64;
    let second_of_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        second_of_day / 3600,
        (second_of_day / 60) % 60,
        second_of_day % 60
    )
}

/// Howard Hinnant's days-to-civil conversion (proleptic Gregorian calendar).
fn civil_from_days(days_since_epoch: i64) -> (i64, u32, u32) {
    let z = days_since_epoch + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_have_the_ec2_shape_and_differ() {
        let first = new_resource_id("vol");
        let second = new_resource_id("vol");
        assert!(is_valid_resource_id("vol", &first), "{first}");
        assert_eq!(first.len(), 4 + RESOURCE_ID_HEX_DIGITS);
        assert_ne!(first, second);
    }

    #[test]
    fn malformed_ids_are_rejected() {
        assert!(is_valid_resource_id("vol", "vol-0123456789abcdef0"));
        assert!(is_valid_resource_id("vol", "vol-0123abcd"));
        assert!(!is_valid_resource_id("vol", "vol-0123456789ABCDEF0"));
        assert!(!is_valid_resource_id("vol", "snap-0123456789abcdef0"));
        assert!(!is_valid_resource_id("vol", "vol-0123456789abcdef"));
        assert!(!is_valid_resource_id("vol", "vol0123456789abcdef0"));
        assert!(!is_valid_resource_id("vol", "vol-0123456789abcdefg"));
    }

    #[test]
    fn timestamps_match_known_dates() {
        assert_eq!(format_rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_rfc3339(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(format_rfc3339(1_795_614_923, 0), "2026-11-25T13:55:23.000Z");
    }

    #[test]
    fn secret_comparison_is_exact() {
        assert!(secrets_equal("abc", "abc"));
        assert!(!secrets_equal("abc", "abd"));
        assert!(!secrets_equal("abc", "abcd"));
    }
}
