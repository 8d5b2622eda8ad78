//! Times as the CLI prints and reads them: UTC, to the millisecond, without a date crate.

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS.mmm` (UTC).
pub fn format_time(ms: u64) -> String {
    // UTC, to the millisecond, without a date crate.
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        ms % 1000
    )
}

/// Parses a UTC time as `--scheduled` takes it: `YYYY-MM-DD HH:MM[:SS]`, a `T` for the
/// space allowed, and an optional `Z`, `+00` or `+00:00`; unix milliseconds.
pub fn parse_utc(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "{s:?}: expected a UTC time such as \"2026-12-03 22:00\" or \"2026-12-03T22:00:00Z\""
        )
    };
    let t = s.trim();
    let t = t
        .strip_suffix('Z')
        .or_else(|| t.strip_suffix("+00:00"))
        .or_else(|| t.strip_suffix("+00"))
        .unwrap_or(t);
    let (date, time) = t.split_once([' ', 'T']).ok_or_else(bad)?;
    let num = |x: &str| x.parse::<i64>().map_err(|_| bad());
    let d: Vec<&str> = date.split('-').collect();
    let h: Vec<&str> = time.split(':').collect();
    if d.len() != 3 || !(2..=3).contains(&h.len()) {
        return Err(bad());
    }
    let (y, m, day) = (num(d[0])?, num(d[1])?, num(d[2])?);
    let (hh, mm) = (num(h[0])?, num(h[1])?);
    let ss = if h.len() == 3 { num(h[2])? } else { 0 };
    if !(1970..=9999).contains(&y)
        || !(1..=12).contains(&m)
        || !(1..=31).contains(&day)
        || !(0..24).contains(&hh)
        || !(0..60).contains(&mm)
        || !(0..60).contains(&ss)
    {
        return Err(bad());
    }
    // days_from_civil (the inverse of civil_from_days).
    let yy = if m <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    if civil_from_days(days) != (y, m as u32, day as u32) {
        return Err(bad());
    }
    Ok(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000) as u64)
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduled_times_parse_as_utc_and_bad_ones_are_refused() {
        assert_eq!(parse_utc("1970-01-01 00:00"), Ok(0));
        assert_eq!(parse_utc("2026-12-03 22:00:00Z"), Ok(1_796_335_200_000));
        assert_eq!(parse_utc("2026-12-03T22:00:00+00"), Ok(1_796_335_200_000));
        assert_eq!(
            format_time(parse_utc("2024-02-29 23:59:59").unwrap()),
            "2024-02-29 23:59:59.000"
        );
        for bad in [
            "",
            "tomorrow",
            "2026-13-01 00:00",
            "2026-02-30 10:00",
            "2026-12-03",
            "2026-12-03 25:00",
            "2026-12-03 10:00+02",
        ] {
            assert!(parse_utc(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_utc_times() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00.000");
        assert_eq!(format_time(1_796_000_000_123), "2026-11-30 00:53:20.123");
        assert_eq!(format_time(951_782_400_000), "2000-02-29 00:00:00.000");
    }
}
