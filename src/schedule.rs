//! Schedules: when an agent's root or a mirror's replication runs next.
//!
//! Two forms, as in the configuration: a fixed interval (`"30s"`, `"1h30m"`)
//! and a five-field cron expression (`"0 2 * * *"`), evaluated in UTC at minute
//! resolution with Vixie cron's rules (when both day-of-month and day-of-week
//! are restricted, either may match). This module computes instants only; it
//! does not sleep or spawn anything.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A duration, cron expression or schedule that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// A duration such as `"30s"` that does not parse.
    #[error("invalid duration {input:?}: {reason} (examples: \"500ms\", \"30s\", \"5m\", \"1h30m\", \"2d\")")]
    Duration {
        /// The text given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A cron expression that does not parse or never fires.
    #[error("invalid cron expression {input:?}: {reason} (five fields: minute hour day-of-month month day-of-week)")]
    Cron {
        /// The text given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Both or neither of `interval` and `cron` were given.
    #[error("give exactly one of interval and cron")]
    Ambiguous,
}

/// Parses `"500ms"`, `"30s"`, `"5m"`, `"1h30m"`, `"2d"`: one or more numbers,
/// each followed by `ms`, `s`, `m`, `h` or `d`.
///
/// # Errors
/// When the text is empty, a number has no unit, a unit is unknown, or the
/// sum overflows.
pub fn parse_duration(text: &str) -> Result<Duration, ScheduleError> {
    let error = |reason| ScheduleError::Duration { input: text.to_string(), reason };
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(error("empty"));
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(error("expected a number"));
        }
        let number: u64 = rest[..digits].parse().map_err(|_| error("number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let millis_per_unit = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err(error("a number without a unit")),
            _ => return Err(error("unknown unit")),
        };
        rest = &rest[unit_len..];
        let millis = number.checked_mul(millis_per_unit).ok_or_else(|| error("too large"))?;
        total = total.checked_add(Duration::from_millis(millis)).ok_or_else(|| error("too large"))?;
    }
    Ok(total)
}

/// When something runs: every fixed interval, or at the minutes a cron
/// expression names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// A fixed interval after the previous run.
    Every(Duration),
    /// The minutes a cron expression names.
    Cron(Cron),
}

impl Schedule {
    /// Builds a schedule from the two configuration fields, exactly one of
    /// which must be set.
    ///
    /// # Errors
    /// When both or neither are set, the interval is zero, or either does not
    /// parse.
    pub fn from_parts(interval: Option<&str>, cron: Option<&str>) -> Result<Schedule, ScheduleError> {
        match (interval, cron) {
            (Some(interval), None) => match parse_duration(interval)? {
                Duration::ZERO => Err(ScheduleError::Duration { input: interval.to_string(), reason: "zero" }),
                every => Ok(Schedule::Every(every)),
            },
            (None, Some(cron)) => Ok(Schedule::Cron(cron.parse()?)),
            _ => Err(ScheduleError::Ambiguous),
        }
    }

    /// The next run strictly after `t`.
    pub fn next_after(&self, t: SystemTime) -> SystemTime {
        match self {
            Schedule::Every(every) => t + *every,
            Schedule::Cron(cron) => cron.next_after(t),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Every(every) => write!(f, "every {every:?}"),
            Schedule::Cron(cron) => write!(f, "cron \"{}\" (UTC)", cron.text),
        }
    }
}

/// A five-field cron expression: minute, hour, day of month, month, day of
/// week. Fields take `*`, `a`, `a-b`, lists `a,b` and steps `*/n`, `a-b/n`,
/// `a/n`; months and days of week also take three-letter English names; day of
/// week 0 and 7 are both Sunday.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    text: String,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    any_day: bool,
    any_weekday: bool,
}

const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// The search for the next run never needs more than this many days: a
/// February 29 comes at most eight years apart.
const SEARCH_DAYS: i64 = 9 * 366;

impl FromStr for Cron {
    type Err = ScheduleError;

    fn from_str(text: &str) -> Result<Cron, ScheduleError> {
        let error = |reason: String| ScheduleError::Cron { input: text.to_string(), reason };
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(error(format!("{} fields", fields.len())));
        };
        let weekdays = parse_field(weekday, 0, 7, 0, &WEEKDAYS).map_err(|e| error(format!("day of week: {e}")))?;
        let cron = Cron {
            text: fields.join(" "),
            minutes: parse_field(minute, 0, 59, 0, &[]).map_err(|e| error(format!("minute: {e}")))?,
            hours: parse_field(hour, 0, 23, 0, &[]).map_err(|e| error(format!("hour: {e}")))?,
            days: parse_field(day, 1, 31, 1, &[]).map_err(|e| error(format!("day of month: {e}")))?,
            months: parse_field(month, 1, 12, 1, &MONTHS).map_err(|e| error(format!("month: {e}")))?,
            weekdays: (weekdays | weekdays >> 7) & 0x7f,
            any_day: day.starts_with('*'),
            any_weekday: weekday.starts_with('*'),
        };
        if cron.next_minute(0).is_none() {
            return Err(error("it never fires".to_string()));
        }
        Ok(cron)
    }
}

impl Cron {
    /// The first minute the expression names strictly after `t`.
    pub fn next_after(&self, t: SystemTime) -> SystemTime {
        let minute = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() / 60 + 1);
        // Parsing proved the expression fires within SEARCH_DAYS of any day.
        let next = self.next_minute(minute).unwrap_or(minute + SEARCH_DAYS as u64 * 1440);
        UNIX_EPOCH + Duration::from_secs(next * 60)
    }

    /// The first minute since the epoch, at or after `from`, that matches.
    fn next_minute(&self, from: u64) -> Option<u64> {
        let first_day = (from / 1440) as i64;
        for day in first_day..first_day + SEARCH_DAYS {
            if !self.matches_day(day) {
                continue;
            }
            let start = if day == first_day { from % 1440 } else { 0 };
            let found = (start..1440).find(|m| bit(self.hours, m / 60) && bit(self.minutes, m % 60));
            if let Some(m) = found {
                return Some(day as u64 * 1440 + m);
            }
        }
        None
    }

    fn matches_day(&self, day: i64) -> bool {
        let (_, month, dom) = civil_from_days(day);
        let weekday = (day + 4).rem_euclid(7) as u64; // 1970-01-01 was a Thursday
        let by_dom = bit(self.days, dom);
        let by_weekday = bit(self.weekdays, weekday);
        let day_ok = match (self.any_day, self.any_weekday) {
            (true, true) => true,
            (true, false) => by_weekday,
            (false, true) => by_dom,
            (false, false) => by_dom || by_weekday,
        };
        bit(self.months, month) && day_ok
    }
}

impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn bit(mask: u64, n: u64) -> bool {
    mask >> n & 1 == 1
}

/// Parses one field into a bit mask over `min..=max`; `names[i]` stands for
/// `name_base + i`.
fn parse_field(field: &str, min: u64, max: u64, name_base: u64, names: &[&str]) -> Result<u64, String> {
    let value = |text: &str| -> Result<u64, String> {
        let lower = text.to_ascii_lowercase();
        let n = match names.iter().position(|name| *name == lower) {
            Some(i) => i as u64 + name_base,
            None => text.parse().map_err(|_| format!("{text:?} is not a number"))?,
        };
        if (min..=max).contains(&n) { Ok(n) } else { Err(format!("{n} is outside {min}-{max}")) }
    };
    let mut mask = 0u64;
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => match step.parse::<u64>() {
                Ok(step) if step > 0 => (range, Some(step)),
                _ => return Err(format!("bad step {step:?}")),
            },
            None => (item, None),
        };
        let (low, high) = match range {
            "*" => (min, max),
            _ => match range.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                None if step.is_some() => (value(range)?, max),
                None => (value(range)?, value(range)?),
            },
        };
        if low > high {
            return Err(format!("range {range:?} runs backwards"));
        }
        for n in (low..=high).step_by(step.unwrap_or(1) as usize) {
            mask |= 1 << n;
        }
    }
    Ok(mask)
}

/// A Unix time in milliseconds as an ISO-8601 UTC date and time
/// (`2026-11-21T02:00:00Z`).
pub fn iso_utc(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seconds since the epoch of a UTC date and time.
    fn utc(y: i64, mo: i64, d: i64, h: u64, mi: u64) -> SystemTime {
        let (y, m) = if mo <= 2 { (y - 1, mo + 9) } else { (y, mo - 3) };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * m + 2) / 5 + d - 1;
        let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
        UNIX_EPOCH + Duration::from_secs(days as u64 * 86_400 + h * 3600 + mi * 60)
    }

    fn next(expr: &str, from: SystemTime) -> SystemTime {
        expr.parse::<Cron>().unwrap().next_after(from)
    }

    #[test]
    fn durations_parse_and_mistakes_are_errors() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        for bad in ["", "30", "s", "3x", "1h 30m", "-1s", "99999999999999999999s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Schedule::from_parts(Some("0s"), None).is_err());
        assert!(Schedule::from_parts(Some("1s"), Some("* * * * *")).is_err());
        assert!(Schedule::from_parts(None, None).is_err());
    }

    #[test]
    fn nightly_runs_at_two_the_next_day() {
        let from = utc(2026, 11, 21, 2, 45) + Duration::from_secs(30);
        assert_eq!(next("0 2 * * *", from), utc(2026, 11, 22, 2, 0));
        assert_eq!(next("0 2 * * *", utc(2026, 11, 21, 1, 59)), utc(2026, 11, 21, 2, 0));
        // Strictly after: a run at 02:00 does not fire again at 02:00.
        assert_eq!(next("0 2 * * *", utc(2026, 11, 21, 2, 0)), utc(2026, 11, 22, 2, 0));
    }

    #[test]
    fn steps_ranges_lists_and_names() {
        assert_eq!(next("*/15 * * * *", utc(2026, 1, 1, 10, 7)), utc(2026, 1, 1, 10, 15));
        assert_eq!(next("5,35 9-17/4 * * *", utc(2026, 1, 1, 10, 0)), utc(2026, 1, 1, 13, 5));
        // 2026-11-21 is a Saturday: weekdays resume on Monday the 23rd.
        assert_eq!(next("30 6 * * mon-fri", utc(2026, 11, 21, 0, 0)), utc(2026, 11, 23, 6, 30));
        assert_eq!(next("0 0 * * 7", utc(2026, 11, 21, 0, 0)), utc(2026, 11, 22, 0, 0));
        assert_eq!(next("0 0 1 JAN *", utc(2026, 11, 21, 0, 0)), utc(2027, 1, 1, 0, 0));
        // Both day fields restricted: either matches (the 1st, or a Monday).
        assert_eq!(next("0 0 1 * 1", utc(2026, 11, 21, 0, 0)), utc(2026, 11, 23, 0, 0));
        assert_eq!(next("0 0 29 2 *", utc(2026, 11, 21, 0, 0)), utc(2028, 2, 29, 0, 0));
    }

    #[test]
    fn times_print_as_utc() {
        assert_eq!(iso_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_utc(1_763_683_200_123), "2025-11-21T00:00:00Z");
        assert_eq!(iso_utc(951_782_400_000), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn bad_expressions_say_which_field() {
        for (bad, says) in [
            ("* * * *", "4 fields"),
            ("60 * * * *", "minute"),
            ("* 24 * * *", "hour"),
            ("* * 0 * *", "day of month"),
            ("* * * 13 *", "month"),
            ("* * * * 8", "day of week"),
            ("*/0 * * * *", "step"),
            ("5-1 * * * *", "backwards"),
            ("0 0 30 2 *", "never fires"),
        ] {
            let message = bad.parse::<Cron>().unwrap_err().to_string();
            assert!(message.contains(says), "{bad:?}: {message}");
        }
    }
}
