//! Budget and quota windows: calendar-aligned in a time zone (days, weeks, months) or aligned to
//! the epoch (seconds, minutes, hours), plus `lifetime`.

use chrono::{Datelike, Duration, NaiveDate, TimeZone};
use chrono_tz::Tz;

/// A window kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// One second.
    Second,
    /// One minute.
    Minute,
    /// One hour.
    Hour,
    /// A calendar day in the time zone.
    Day,
    /// A calendar week (Monday 00:00) in the time zone.
    Week,
    /// A calendar month in the time zone.
    Month,
    /// Never resets.
    Lifetime,
}

impl Window {
    /// Parses a budget window: `daily`, `weekly`, `monthly`, `lifetime`.
    pub fn parse_budget(text: &str) -> Option<Window> {
        match text {
            "daily" => Some(Window::Day),
            "weekly" => Some(Window::Week),
            "monthly" => Some(Window::Month),
            "lifetime" => Some(Window::Lifetime),
            _ => None,
        }
    }

    /// Parses a quota window: `second`, `minute`, `hour`, `day`, `month`.
    pub fn parse_quota(text: &str) -> Option<Window> {
        match text {
            "second" => Some(Window::Second),
            "minute" => Some(Window::Minute),
            "hour" => Some(Window::Hour),
            "day" => Some(Window::Day),
            "month" => Some(Window::Month),
            _ => None,
        }
    }

    /// The budget name of the window.
    pub fn budget_name(self) -> &'static str {
        match self {
            Window::Day => "daily",
            Window::Week => "weekly",
            Window::Month => "monthly",
            Window::Lifetime => "lifetime",
            Window::Second => "second",
            Window::Minute => "minute",
            Window::Hour => "hour",
        }
    }

    /// The quota name of the window (`per_minute` style suffix).
    pub fn quota_name(self) -> &'static str {
        match self {
            Window::Second => "second",
            Window::Minute => "minute",
            Window::Hour => "hour",
            Window::Day => "day",
            Window::Week => "week",
            Window::Month => "month",
            Window::Lifetime => "lifetime",
        }
    }

    /// `[start, end)` of the window containing `now_ms`, in Unix ms (`end` is `i64::MAX` for
    /// `lifetime`).
    pub fn bounds(self, now_ms: i64, tz: Tz) -> (i64, i64) {
        let fixed = |unit: i64| {
            let start = now_ms.div_euclid(unit) * unit;
            (start, start + unit)
        };
        match self {
            Window::Second => fixed(1_000),
            Window::Minute => fixed(60_000),
            Window::Hour => fixed(3_600_000),
            Window::Lifetime => (0, i64::MAX),
            Window::Day | Window::Week | Window::Month => {
                // A UTC instant maps to exactly one local time.
                let Some(local) = tz.timestamp_millis_opt(now_ms).single() else {
                    return (now_ms, now_ms.saturating_add(1));
                };
                let date = local.date_naive();
                let (start, end) = match self {
                    Window::Day => (date, date + Duration::days(1)),
                    Window::Week => {
                        let monday =
                            date - Duration::days(i64::from(date.weekday().num_days_from_monday()));
                        (monday, monday + Duration::days(7))
                    }
                    _ => {
                        let first =
                            NaiveDate::from_ymd_opt(date.year(), date.month(), 1).unwrap_or(date);
                        let next = if date.month() == 12 {
                            NaiveDate::from_ymd_opt(date.year() + 1, 1, 1)
                        } else {
                            NaiveDate::from_ymd_opt(date.year(), date.month() + 1, 1)
                        }
                        .unwrap_or(first + Duration::days(31));
                        (first, next)
                    }
                };
                (midnight_ms(start, tz), midnight_ms(end, tz))
            }
        }
    }
}

/// Local midnight of `date` in `tz`, in Unix ms (the earliest instant if midnight is ambiguous,
/// the first instant after a gap if it does not exist).
fn midnight_ms(date: NaiveDate, tz: Tz) -> i64 {
    let midnight = date.and_hms_opt(0, 0, 0).unwrap_or_default();
    for minutes in 0..=180 {
        if let Some(t) = tz
            .from_local_datetime(&(midnight + Duration::minutes(minutes)))
            .earliest()
        {
            return t.timestamp_millis();
        }
    }
    midnight.and_utc().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(text)
            .expect("rfc3339")
            .timestamp_millis()
    }

    #[test]
    fn calendar_windows_align_in_the_time_zone() {
        let now = ms("2026-03-18T23:30:00Z");
        assert_eq!(
            Window::Day.bounds(now, Tz::UTC),
            (ms("2026-03-18T00:00:00Z"), ms("2026-03-19T00:00:00Z"))
        );
        // 00:30 on the 19th in Paris (UTC+1 in March before DST).
        assert_eq!(
            Window::Day.bounds(now, chrono_tz::Europe::Paris),
            (ms("2026-03-18T23:00:00Z"), ms("2026-03-19T23:00:00Z"))
        );
        assert_eq!(
            Window::Week.bounds(now, Tz::UTC),
            (ms("2026-03-16T00:00:00Z"), ms("2026-03-23T00:00:00Z"))
        );
        assert_eq!(
            Window::Month.bounds(now, Tz::UTC),
            (ms("2026-03-01T00:00:00Z"), ms("2026-04-01T00:00:00Z"))
        );
        let december = ms("2026-12-31T12:00:00Z");
        assert_eq!(
            Window::Month.bounds(december, Tz::UTC).1,
            ms("2027-01-01T00:00:00Z")
        );
        // The month containing the DST switch in Paris ends at 22:00 UTC.
        assert_eq!(
            Window::Month.bounds(now, chrono_tz::Europe::Paris).1,
            ms("2026-03-31T22:00:00Z")
        );
    }

    #[test]
    fn short_windows_align_to_the_epoch() {
        let now = ms("2026-03-18T10:15:42.123Z");
        assert_eq!(
            Window::Second.bounds(now, Tz::UTC),
            (ms("2026-03-18T10:15:42Z"), ms("2026-03-18T10:15:43Z"))
        );
        assert_eq!(
            Window::Minute.bounds(now, Tz::UTC).0,
            ms("2026-03-18T10:15:00Z")
        );
        assert_eq!(
            Window::Hour.bounds(now, Tz::UTC).1,
            ms("2026-03-18T11:00:00Z")
        );
        assert_eq!(Window::Lifetime.bounds(now, Tz::UTC), (0, i64::MAX));
    }
}
