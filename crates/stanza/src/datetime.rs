//! XEP-0082 date and time profiles: the UTC `DateTime` form used by XEP-0203 delays,
//! XEP-0202 entity time and archive timestamps.

/// Formats seconds since the Unix epoch as `CCYY-MM-DDThh:mm:ssZ` (XEP-0082 §3.3,
/// RFC 3339 §5.6).
pub fn datetime(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's
/// `civil_from_days`, restricted to non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(datetime(0), "1970-01-01T00:00:00Z");
        // XEP-0202 §3 example instant.
        assert_eq!(datetime(1_166_551_115), "2006-12-19T17:58:35Z");
        // Leap day and end of a leap year.
        assert_eq!(datetime(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(datetime(1_735_689_599), "2024-12-31T23:59:59Z");
        assert_eq!(datetime(4_107_542_400), "2100-03-01T00:00:00Z");
    }
}
