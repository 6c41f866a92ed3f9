//! Cron expressions in IANA time zones: when a cron schedule fires next.
//!
//! Owns: parsing an expression (through `croner`) and a zone (through `chrono-tz`) into a
//! `CronSchedule`, and the one rule for its fire times, `next_after`.
//! Must never: read the clock (every function takes the instant it starts from), or
//! return a fire time that is not strictly after that instant.
//!
//! Accepted: standard five-field crontab (minute hour day-of-month month day-of-week;
//! weekday 0 or 7 is Sunday, `1-5` is Monday to Friday, names such as `MON` and `JAN`),
//! the six-field form with a leading seconds field, and `@yearly`, `@annually`,
//! `@monthly`, `@weekly`, `@daily`, `@hourly`. When both day fields are restricted a day
//! matches either (as in Vixie cron). Croner's extensions (`L`, `W`, `#`, `+`) pass too.
//!
//! Daylight saving time, croner's wall-clock rule (the README states it):
//! - A *fixed-time* job (one value each in its second, minute and hour fields, such as
//!   `30 2 * * *`) fires once a day whatever the clocks do: when its time falls in the hour
//!   skipped by a spring-forward, it fires at the first instant after the gap (03:00);
//!   when its time comes twice on a fall-back day, it fires at the first.
//! - An *interval* job (a `*`, a step, a range or a list in those fields) fires at every
//!   wall-clock time that matches and exists: occurrences in a skipped hour are dropped,
//!   and those in a repeated hour run twice, once in each. `0 1-3 * * *` in New York thus
//!   fires at 01:00 and 03:00 on the spring-forward day and at 01:00, 01:00 again, 02:00
//!   and 03:00 on the fall-back day.
//!
//! Croner searches in local wall-clock time; on a fall-back day that alone would return an
//! instant *before* the start when the start lies in the repeated hour, and would skip the
//! repeated hour when the start lies just before it; on a spring-forward day it moves a
//! fixed-time job to the gap's end whenever its search steps into the gap, even a job whose
//! time is not in it (`0 1 * * *` would fire at 01:00 and again at 03:00). `next_after`
//! corrects all three, so fire times always increase and each follows the rule above.

use chrono::{DateTime, LocalResult, NaiveDateTime, Offset, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::{Cron, JobType};

use super::InvalidSchedule;

/// The longest repeated hour (fall-back) that `next_after` looks ahead for. Real zones
/// repeat at most two hours.
const FOLD_LOOKAHEAD: TimeDelta = TimeDelta::hours(3);
/// Steps of the fold scan; every real offset change lasts far longer.
const FOLD_SCAN_STEP: TimeDelta = TimeDelta::minutes(10);

/// A parsed cron expression in its time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    expression: String,
    cron: Cron,
    tz: Tz,
    fixed_time: bool,
    /// A fixed-time job's hour, minute and second.
    fixed_at: Option<(u32, u32, u32)>,
}

/// Parses an IANA zone name such as `Europe/Berlin` (or `UTC`).
pub fn parse_timezone(name: &str) -> Result<Tz, InvalidSchedule> {
    name.trim()
        .parse::<Tz>()
        .map_err(|_| InvalidSchedule::UnknownTimezone {
            zone: name.to_string(),
        })
}

impl CronSchedule {
    /// Parses `expression` in the zone named `timezone`, refusing one that never fires.
    pub fn parse(expression: &str, timezone: &str) -> Result<Self, InvalidSchedule> {
        let tz = parse_timezone(timezone)?;
        let invalid = |message: String| InvalidSchedule::InvalidCron {
            expression: expression.to_string(),
            message,
        };
        let text = expression.trim();
        if text.is_empty() {
            return Err(invalid("the expression is empty".into()));
        }
        if !text.starts_with('@') {
            let fields = text.split_whitespace().count();
            if !(5..=6).contains(&fields) {
                return Err(invalid(format!(
                    "it has {fields} fields; a cron expression has 5 (minute hour day-of-month \
                     month day-of-week) or 6 (a leading seconds field)"
                )));
            }
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(text)
            .map_err(|e| invalid(e.to_string()))?;
        let fixed_time = cron.determine_job_type() == JobType::FixedTime;
        let only = |count: u32, matches: &dyn Fn(u32) -> bool| (0..count).find(|v| matches(*v));
        let p = &cron.pattern;
        let fixed_at = match (
            only(24, &|h| p.hour_match(h).unwrap_or(false)),
            only(60, &|m| p.minute_match(m).unwrap_or(false)),
            only(60, &|s| p.second_match(s).unwrap_or(false)),
        ) {
            (Some(h), Some(m), Some(s)) if fixed_time => Some((h, m, s)),
            _ => None,
        };
        let schedule = Self {
            expression: expression.to_string(),
            fixed_time,
            fixed_at,
            cron,
            tz,
        };
        // A date that no month has (`0 0 30 2 *`) parses but never comes.
        let epoch = DateTime::<Utc>::from_timestamp(0, 0).unwrap_or_default();
        if schedule.next_after(epoch).is_none() {
            return Err(invalid("it matches no date in any year".into()));
        }
        Ok(schedule)
    }

    pub fn expression(&self) -> &str {
        &self.expression
    }

    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// True for a fixed-time job (see the module's DST rule).
    pub fn is_fixed_time(&self) -> bool {
        self.fixed_time
    }

    /// The first fire time strictly after `after`, or `None` if there is none (croner
    /// searches up to the year 5000).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let by_wall_clock = self.next_by_wall_clock(after)?;
        match self.in_repeated_hour_before(after, by_wall_clock) {
            Some(earlier) => Some(earlier),
            None => Some(by_wall_clock),
        }
    }

    /// The next `n` fire times strictly after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut cursor = after;
        while out.len() < n {
            let Some(next) = self.next_after(cursor) else {
                break;
            };
            out.push(next);
            cursor = next;
        }
        out
    }

    /// Croner's search, forward in local wall-clock time, keeping only instants after
    /// `after`: when it finds a wall-clock time that comes twice, the second coming may be
    /// the one after `after` (interval jobs only: a fixed-time job fires at the first).
    fn next_by_wall_clock(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Whole seconds: croner steps by seconds from here, and `floor(after) + 1 s > after`.
        let start = after.with_nanosecond(0).unwrap_or(after);
        let mut cursor: DateTime<Tz> = start.with_timezone(&self.tz);
        for _ in 0..8 {
            let found = self.cron.find_next_occurrence(&cursor, false).ok()?;
            if !self.is_due_at(&found) {
                cursor = found;
                continue;
            }
            let wall = found.naive_local();
            let comings: Vec<DateTime<Tz>> = match self.tz.from_local_datetime(&wall) {
                LocalResult::Ambiguous(first, second) if !self.fixed_time => vec![first, second],
                LocalResult::Ambiguous(first, _) => vec![first],
                _ => vec![found],
            };
            if let Some(hit) = comings.iter().find(|c| c.with_timezone(&Utc) > after) {
                return Some(hit.with_timezone(&Utc));
            }
            // Both comings are at or before `after`: search on from the later one.
            cursor = self.tz.from_local_datetime(&wall).latest().unwrap_or(found);
        }
        None
    }

    /// Croner moves a fixed-time job to the end of a spring-forward gap whenever its
    /// search steps into the gap, even when the job's own time is not in it (`0 1 * * *`
    /// in New York would fire at 01:00 and again at 03:00). Only a job whose time the gap
    /// swallowed on that day is due at the gap's end.
    fn is_due_at(&self, found: &DateTime<Tz>) -> bool {
        if self.cron.is_time_matching(found).unwrap_or(false) {
            return true;
        }
        let Some((h, m, s)) = self.fixed_at else {
            return false;
        };
        let Some(own_time) = found.date_naive().and_hms_opt(h, m, s) else {
            return false;
        };
        own_time < found.naive_local()
            && matches!(self.tz.from_local_datetime(&own_time), LocalResult::None)
    }

    /// When `after` is shortly before a fall-back, the repeated hour's second pass comes
    /// after `after` although its wall-clock times are earlier than `after`'s: croner,
    /// searching forward in wall-clock time, never looks there. Returns the first
    /// interval-job fire in that second pass, if it comes before `next`.
    fn in_repeated_hour_before(
        &self,
        after: DateTime<Utc>,
        next: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        if self.fixed_time {
            return None;
        }
        let (fold_at, repeated) = first_fold(self.tz, after, next.min(after + FOLD_LOOKAHEAD))?;
        let second_pass = fold_at.with_timezone(&self.tz);
        let found = self.cron.find_next_occurrence(&second_pass, true).ok()?;
        let wall: NaiveDateTime = found.naive_local();
        if wall >= second_pass.naive_local() + repeated {
            return None;
        }
        let second_coming = self.tz.from_local_datetime(&wall).latest()?;
        let at = second_coming.with_timezone(&Utc);
        (at > after && at < next).then_some(at)
    }
}

fn utc_offset(tz: Tz, at: DateTime<Utc>) -> i32 {
    tz.offset_from_utc_datetime(&at.naive_utc())
        .fix()
        .local_minus_utc()
}

/// The first instant in `(from, until]` at which the zone's offset drops (clocks go back),
/// with how much wall-clock time is repeated.
fn first_fold(
    tz: Tz,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Option<(DateTime<Utc>, TimeDelta)> {
    let mut lo = from;
    let mut lo_offset = utc_offset(tz, lo);
    while lo < until {
        let hi = (lo + FOLD_SCAN_STEP).min(until);
        let hi_offset = utc_offset(tz, hi);
        if hi_offset < lo_offset {
            // Narrow to the second: offsets change on whole seconds.
            let (mut a, mut b) = (lo, hi);
            while b - a > TimeDelta::seconds(1) {
                let mid = a + (b - a) / 2;
                if utc_offset(tz, mid) < lo_offset {
                    b = mid;
                } else {
                    a = mid;
                }
            }
            let b = b.with_nanosecond(0).unwrap_or(b);
            let b = if utc_offset(tz, b) < lo_offset {
                b
            } else {
                b + TimeDelta::seconds(1)
            };
            return Some((b, TimeDelta::seconds(i64::from(lo_offset - hi_offset))));
        }
        lo = hi;
        lo_offset = hi_offset;
    }
    None
}

/// The first fire of `expression` in `timezone` strictly after `after`; `None` if the
/// expression or zone is invalid or it never fires again.
pub fn next_fire(expression: &str, timezone: &str, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    CronSchedule::parse(expression, timezone)
        .ok()?
        .next_after(after)
}

/// The next `n` fire times after `from`, as RFC 3339 times in the schedule's zone (with
/// its offset), for `beat schedule next <id> -n N`.
pub fn render_next_n(
    expression: &str,
    timezone: &str,
    from: DateTime<Utc>,
    n: usize,
) -> Result<Vec<String>, InvalidSchedule> {
    let schedule = CronSchedule::parse(expression, timezone)?;
    Ok(schedule
        .upcoming(from, n)
        .into_iter()
        .map(|at| {
            at.with_timezone(&schedule.tz)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        })
        .collect())
}
