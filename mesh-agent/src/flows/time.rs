//! `meshctl observe --since` and `--until`: a duration ago (`5m`, `1h30m`, `300ms`) or an RFC 3339 time
//! (`2026-11-24T10:00:00Z`, `2026-11-24T10:00:00.5+01:00`, or a date `2026-11-24`).

/// The time `value` names, in nanoseconds since the Unix epoch; `now_ns` is now.
pub fn parse(value: &str, now_ns: u64) -> Option<u64> {
    if let Some(ago) = duration_ns(value) {
        return Some(now_ns.saturating_sub(ago));
    }
    rfc3339_ns(value)
}

fn duration_ns(value: &str) -> Option<u64> {
    let mut total = 0f64;
    let mut rest = value;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    Some(total as u64)
}

fn rfc3339_ns(value: &str) -> Option<u64> {
    let (date, time) = match value.split_once(['T', 't', ' ']) {
        Some((date, time)) => (date, Some(time)),
        None => (value, None),
    };
    let mut parts = date.splitn(3, '-');
    let year: i64 = parts.next()?.parse().ok()?;
    let month: u32 = parts.next()?.parse().ok()?;
    let day: u32 = parts.next()?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let mut seconds = days * 86_400;
    let mut nanos = 0u64;
    if let Some(time) = time {
        let (clock, offset_s) = if let Some(clock) = time.strip_suffix(['Z', 'z']) {
            (clock, 0i64)
        } else {
            let at = time.rfind(['+', '-'])?;
            let (clock, offset) = time.split_at(at);
            let sign = if offset.starts_with('-') { -1 } else { 1 };
            let (h, m) = offset[1..].split_once(':')?;
            (clock, sign * (h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60))
        };
        let (hms, fraction) = clock.split_once('.').unwrap_or((clock, ""));
        let mut hms = hms.split(':');
        let h: i64 = hms.next()?.parse().ok()?;
        let m: i64 = hms.next().unwrap_or("0").parse().ok()?;
        let s: i64 = hms.next().unwrap_or("0").parse().ok()?;
        if h > 23 || m > 59 || s > 60 {
            return None;
        }
        seconds += h * 3600 + m * 60 + s - offset_s;
        if !fraction.is_empty() {
            if !fraction.chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let digits = &fraction[..fraction.len().min(9)];
            nanos = digits.parse::<u64>().ok()? * 10u64.pow(9 - digits.len() as u32);
        }
    }
    u64::try_from(seconds).ok().map(|s| s * 1_000_000_000 + nanos)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month, day, hour, minute, second) of a Unix time in seconds, UTC.
pub fn civil(unix_s: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = unix_s.div_euclid(86_400);
    let secs = unix_s.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, (secs / 3600) as u32, (secs % 3600 / 60) as u32, (secs % 60) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times() {
        let now = 1_000_000 * 1_000_000_000;
        assert_eq!(parse("5m", now), Some(now - 300 * 1_000_000_000));
        assert_eq!(parse("1h30m", now), Some(now - 5400 * 1_000_000_000));
        assert_eq!(parse("1970-01-02T00:00:01Z", now), Some(86_401 * 1_000_000_000));
        assert_eq!(parse("1970-01-02T01:00:01.5+01:00", now), Some(86_401 * 1_000_000_000 + 500_000_000));
        assert_eq!(parse("2026-11-24", now), Some(days_from_civil(2026, 11, 24) as u64 * 86_400 * 1_000_000_000));
        assert_eq!(parse("yesterday", now), None);
        assert_eq!(parse("5 minutes", now), None);
        assert_eq!(civil(86_401), (1970, 1, 2, 0, 0, 1));
        assert_eq!(civil(days_from_civil(2026, 11, 24) * 86_400), (2026, 11, 24, 0, 0, 0));
    }
}
