//! Tests of cron parsing and fire times: syntax, zones, DST days of 2026, and properties
//! over random expressions and zones checked against an independent field matcher.

use chrono::{DateTime, Datelike, NaiveDate, Offset, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use proptest::prelude::*;

use super::InvalidSchedule;
use super::cron::{CronSchedule, next_fire, render_next_n};

fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn fires(expr: &str, tz: &str, from: &str, until: &str) -> Vec<DateTime<Utc>> {
    let cron = CronSchedule::parse(expr, tz).unwrap();
    let until = t(until);
    let mut out = Vec::new();
    let mut cursor = t(from);
    while let Some(next) = cron.next_after(cursor) {
        if next > until {
            break;
        }
        out.push(next);
        cursor = next;
    }
    out
}

fn local(at: DateTime<Utc>, tz: &str) -> String {
    let tz: Tz = tz.parse().unwrap();
    at.with_timezone(&tz)
        .format("%Y-%m-%d %H:%M:%S %Z")
        .to_string()
}

// --- syntax ------------------------------------------------------------------------------

#[test]
fn five_fields_weekdays_and_sunday_as_0_or_7() {
    // 2026-11-30 is a Monday.
    let monday = t("2026-11-30T00:00:00Z");
    assert_eq!(
        next_fire("0 9 * * 1-5", "UTC", monday),
        Some(t("2026-11-30T09:00:00Z"))
    );
    let friday_evening = t("2026-12-04T10:00:00Z");
    assert_eq!(
        next_fire("0 9 * * 1-5", "UTC", friday_evening),
        Some(t("2026-12-07T09:00:00Z")),
        "Saturday and Sunday are not in 1-5"
    );
    for sunday in ["0", "7", "SUN"] {
        assert_eq!(
            next_fire(&format!("30 8 * * {sunday}"), "UTC", monday),
            Some(t("2026-12-06T08:30:00Z")),
            "weekday {sunday} is Sunday"
        );
    }
}

#[test]
fn six_fields_have_a_leading_seconds_field() {
    let from = t("2026-06-01T12:00:00Z");
    assert_eq!(
        next_fire("*/15 * * * * *", "UTC", from),
        Some(t("2026-06-01T12:00:15Z"))
    );
    assert_eq!(
        next_fire("5 0 12 * * *", "UTC", from),
        Some(t("2026-06-01T12:00:05Z"))
    );
}

#[test]
fn nicknames() {
    let from = t("2026-06-10T12:34:56Z"); // a Wednesday
    assert_eq!(
        next_fire("@hourly", "UTC", from),
        Some(t("2026-06-10T13:00:00Z"))
    );
    assert_eq!(
        next_fire("@daily", "UTC", from),
        Some(t("2026-06-11T00:00:00Z"))
    );
    assert_eq!(
        next_fire("@weekly", "UTC", from),
        Some(t("2026-06-14T00:00:00Z"))
    );
    assert_eq!(
        next_fire("@monthly", "UTC", from),
        Some(t("2026-07-01T00:00:00Z"))
    );
    assert_eq!(
        next_fire("@yearly", "UTC", from),
        Some(t("2027-01-01T00:00:00Z"))
    );
}

#[test]
fn the_next_fire_is_strictly_after_even_on_a_matching_instant_or_within_a_second() {
    let on = t("2026-06-01T09:00:00Z");
    assert_eq!(
        next_fire("0 9 * * *", "UTC", on),
        Some(t("2026-06-02T09:00:00Z"))
    );
    let just_before = on - TimeDelta::milliseconds(1);
    assert_eq!(next_fire("0 9 * * *", "UTC", just_before), Some(on));
    let just_after = on + TimeDelta::milliseconds(400);
    assert_eq!(
        next_fire("* * * * * *", "UTC", just_after),
        Some(on + TimeDelta::seconds(1))
    );
}

#[test]
fn zones_read_the_expression_in_local_time() {
    let from = t("2026-07-01T00:00:00Z");
    // 09:00 in Berlin in summer is 07:00 UTC; in New York it is 13:00 UTC.
    assert_eq!(
        next_fire("0 9 * * *", "Europe/Berlin", from),
        Some(t("2026-07-01T07:00:00Z"))
    );
    assert_eq!(
        next_fire("0 9 * * *", "America/New_York", from),
        Some(t("2026-07-01T13:00:00Z"))
    );
}

#[test]
fn an_invalid_expression_is_refused_showing_it_and_croners_message() {
    let err = CronSchedule::parse("61 * * * *", "UTC").unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, InvalidSchedule::InvalidCron { .. }));
    assert!(text.contains("'61 * * * *'"), "{text}");
    assert!(
        text.len() > "invalid cron expression '61 * * * *': ".len(),
        "{text}"
    );

    for (expr, needle) in [
        ("", "empty"),
        ("* * * *", "4 fields"),
        ("0 0 0 * * * 2030", "7 fields"),
        ("every day", "2 fields"),
        ("0 0 30 2 *", "no date"),
        ("@reboot", "@reboot"),
    ] {
        let text = CronSchedule::parse(expr, "UTC").unwrap_err().to_string();
        assert!(text.contains(needle), "{expr:?}: {text}");
        assert!(text.contains(&format!("'{expr}'")), "{expr:?}: {text}");
    }
}

#[test]
fn an_unknown_zone_is_refused_by_name() {
    let err = CronSchedule::parse("0 9 * * *", "Mars/Olympus").unwrap_err();
    assert_eq!(
        err,
        InvalidSchedule::UnknownTimezone {
            zone: "Mars/Olympus".into()
        }
    );
    assert!(err.to_string().contains("Mars/Olympus"));
    assert_eq!(
        next_fire("0 9 * * *", "Mars/Olympus", t("2026-01-01T00:00:00Z")),
        None
    );
}

#[test]
fn render_next_n_lists_times_in_the_schedules_zone() {
    let lines =
        render_next_n("0 9 * * 1-5", "Europe/Berlin", t("2026-03-27T00:00:00Z"), 3).unwrap();
    // Friday in CET, then Monday and Tuesday in CEST (clocks went forward on Sunday 29th).
    assert_eq!(
        lines,
        vec![
            "2026-03-27T09:00:00+01:00",
            "2026-03-30T09:00:00+02:00",
            "2026-03-31T09:00:00+02:00"
        ]
    );
    assert!(render_next_n("nope", "UTC", t("2026-01-01T00:00:00Z"), 3).is_err());
}

// --- daylight saving time, 2026 -----------------------------------------------------------

#[test]
fn new_york_spring_forward_a_fixed_0230_job_runs_once_at_0300() {
    // 2026-03-08: 02:00 EST becomes 03:00 EDT (07:00 UTC).
    let got = fires(
        "30 2 * * *",
        "America/New_York",
        "2026-03-07T12:00:00Z",
        "2026-03-09T12:00:00Z",
    );
    let shown: Vec<String> = got
        .iter()
        .map(|at| local(*at, "America/New_York"))
        .collect();
    assert_eq!(
        shown,
        vec!["2026-03-08 03:00:00 EDT", "2026-03-09 02:30:00 EDT"],
        "once on the spring-forward day, at the first instant after the gap"
    );
}

#[test]
fn a_fixed_job_just_before_a_spring_forward_gap_is_not_fired_again_after_it() {
    // Croner alone fires `0 1 * * *` at 01:00 EST and again at 03:00 EDT (its search
    // steps into the 02:00 gap and snaps to its end); the wrapper keeps only 01:00.
    let got = fires(
        "0 1 * * *",
        "America/New_York",
        "2026-03-08T00:00:00Z",
        "2026-03-09T12:00:00Z",
    );
    assert_eq!(
        got,
        vec![t("2026-03-08T06:00:00Z"), t("2026-03-09T05:00:00Z")]
    );
}

#[test]
fn new_york_fall_back_a_fixed_0130_job_runs_once() {
    // 2026-11-01: 02:00 EDT becomes 01:00 EST (06:00 UTC); 01:30 comes twice.
    let got = fires(
        "30 1 * * *",
        "America/New_York",
        "2026-10-31T12:00:00Z",
        "2026-11-02T12:00:00Z",
    );
    assert_eq!(
        got,
        vec![t("2026-11-01T05:30:00Z"), t("2026-11-02T06:30:00Z")]
    );
    // Starting inside the repeated hour, after the first 01:30: not again that day.
    assert_eq!(
        next_fire("30 1 * * *", "America/New_York", t("2026-11-01T06:10:00Z")),
        Some(t("2026-11-02T06:30:00Z"))
    );
}

#[test]
fn london_fixed_jobs_on_2026_transition_days_run_once() {
    // 2026-03-29: 01:00 GMT becomes 02:00 BST. 2026-10-25: 02:00 BST becomes 01:00 GMT.
    let spring = fires(
        "30 1 * * *",
        "Europe/London",
        "2026-03-28T12:00:00Z",
        "2026-03-30T12:00:00Z",
    );
    assert_eq!(
        spring,
        vec![t("2026-03-29T01:00:00Z"), t("2026-03-30T00:30:00Z")]
    );
    let fall = fires(
        "30 1 * * *",
        "Europe/London",
        "2026-10-24T12:00:00Z",
        "2026-10-26T12:00:00Z",
    );
    assert_eq!(
        fall,
        vec![t("2026-10-25T00:30:00Z"), t("2026-10-26T01:30:00Z")]
    );
}

#[test]
fn berlin_fixed_jobs_on_2026_transition_days_run_once() {
    // 2026-03-29: 02:00 CET becomes 03:00 CEST. 2026-10-25: 03:00 CEST becomes 02:00 CET.
    let spring = fires(
        "30 2 * * *",
        "Europe/Berlin",
        "2026-03-28T12:00:00Z",
        "2026-03-30T12:00:00Z",
    );
    assert_eq!(
        spring,
        vec![t("2026-03-29T01:00:00Z"), t("2026-03-30T00:30:00Z")]
    );
    let fall = fires(
        "30 2 * * *",
        "Europe/Berlin",
        "2026-10-24T12:00:00Z",
        "2026-10-26T12:00:00Z",
    );
    assert_eq!(
        fall,
        vec![t("2026-10-25T00:30:00Z"), t("2026-10-26T01:30:00Z")]
    );
}

#[test]
fn interval_jobs_follow_croners_wall_clock_rule() {
    // Spring forward: 02:00 does not exist, so `0 1-3` fires at 01:00 and 03:00.
    let spring = fires(
        "0 1-3 * * *",
        "America/New_York",
        "2026-03-08T05:00:00Z",
        "2026-03-08T12:00:00Z",
    );
    let shown: Vec<String> = spring
        .iter()
        .map(|at| local(*at, "America/New_York"))
        .collect();
    assert_eq!(
        shown,
        vec!["2026-03-08 01:00:00 EST", "2026-03-08 03:00:00 EDT"]
    );
    // Fall back: 01:00 comes twice, and both fire.
    let fall = fires(
        "0 1-3 * * *",
        "America/New_York",
        "2026-11-01T04:00:00Z",
        "2026-11-01T12:00:00Z",
    );
    let shown: Vec<String> = fall
        .iter()
        .map(|at| local(*at, "America/New_York"))
        .collect();
    assert_eq!(
        shown,
        vec![
            "2026-11-01 01:00:00 EDT",
            "2026-11-01 01:00:00 EST",
            "2026-11-01 02:00:00 EST",
            "2026-11-01 03:00:00 EST"
        ]
    );
}

#[test]
fn an_every_30_minutes_job_keeps_even_spacing_through_both_berlin_transitions() {
    for (from, until) in [
        ("2026-03-28T23:00:00Z", "2026-03-29T03:00:00Z"),
        ("2026-10-24T22:00:00Z", "2026-10-25T03:00:00Z"),
    ] {
        let got = fires("*/30 * * * *", "Europe/Berlin", from, until);
        for pair in got.windows(2) {
            assert_eq!(pair[1] - pair[0], TimeDelta::minutes(30), "{pair:?}");
        }
        assert_eq!(got.last(), Some(&t(until)));
    }
}

#[test]
fn starting_just_before_a_fall_back_does_not_skip_the_repeated_hour() {
    // 01:50 EDT (05:50 UTC): the next half hour is 01:00 EST (06:00 UTC), not 02:00 EST.
    assert_eq!(
        next_fire(
            "*/30 * * * *",
            "America/New_York",
            t("2026-11-01T05:50:00Z")
        ),
        Some(t("2026-11-01T06:00:00Z"))
    );
    // Inside the repeated hour, after its first pass: the second pass's next match.
    assert_eq!(
        next_fire(
            "*/30 * * * *",
            "America/New_York",
            t("2026-11-01T06:10:00Z")
        ),
        Some(t("2026-11-01T06:30:00Z"))
    );
}

// --- properties --------------------------------------------------------------------------

/// One field of a generated expression: its text and the values it allows.
#[derive(Debug, Clone)]
struct Field {
    text: String,
    values: Vec<u32>,
}

fn field(lo: u32, hi: u32) -> impl Strategy<Value = Field> {
    let all = move || (lo..=hi).collect::<Vec<u32>>();
    prop_oneof![
        2 => Just(Field { text: "*".into(), values: all() }),
        2 => (lo..=hi).prop_map(|v| Field { text: v.to_string(), values: vec![v] }),
        1 => (2..=(hi - lo).div_ceil(2).max(2)).prop_map(move |step| Field {
            text: format!("*/{step}"),
            values: (lo..=hi).step_by(step as usize).collect(),
        }),
        2 => (lo..=hi, lo..=hi, 1u32..=3).prop_map(|(a, b, step)| {
            let (a, b) = (a.min(b), a.max(b));
            let text = if step == 1 { format!("{a}-{b}") } else { format!("{a}-{b}/{step}") };
            Field { text, values: (a..=b).step_by(step as usize).collect() }
        }),
        2 => proptest::collection::btree_set(lo..=hi, 1..4).prop_map(|set| Field {
            text: set.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
            values: set.into_iter().collect(),
        }),
    ]
}

#[derive(Debug, Clone)]
struct Expr {
    minute: Field,
    hour: Field,
    dom: Field,
    month: Field,
    dow: Field,
}

impl Expr {
    fn text(&self) -> String {
        format!(
            "{} {} {} {} {}",
            self.minute.text, self.hour.text, self.dom.text, self.month.text, self.dow.text
        )
    }

    /// The expression's fields read independently of croner (Vixie rule: when both day
    /// fields are restricted, either may match; weekday 7 is Sunday).
    fn matches_local(&self, at: &DateTime<Tz>) -> bool {
        let dow = at.weekday().num_days_from_sunday();
        let dom_ok = self.dom.values.contains(&at.day());
        let dow_ok = self.dow.values.iter().any(|v| v % 7 == dow);
        let day_ok = match (self.dom.text == "*", self.dow.text == "*") {
            (true, true) => true,
            (false, true) => dom_ok,
            (true, false) => dow_ok,
            (false, false) => dom_ok || dow_ok,
        };
        at.second() == 0
            && self.minute.values.contains(&at.minute())
            && self.hour.values.contains(&at.hour())
            && self.month.values.contains(&at.month())
            && day_ok
    }

    fn day_matches(&self, at: &DateTime<Tz>) -> bool {
        let probe = Expr {
            minute: Field {
                text: "*".into(),
                values: (0..60).collect(),
            },
            hour: Field {
                text: "*".into(),
                values: (0..24).collect(),
            },
            ..self.clone()
        };
        probe.matches_local(&at.with_second(0).unwrap())
    }
}

fn expr() -> impl Strategy<Value = Expr> {
    (
        field(0, 59),
        field(0, 23),
        field(1, 31),
        field(1, 12),
        field(0, 7),
    )
        .prop_map(|(minute, hour, dom, month, dow)| Expr {
            minute,
            hour,
            dom,
            month,
            dow,
        })
}

const ZONES: &[&str] = &[
    "UTC",
    "America/New_York",
    "Europe/London",
    "Europe/Berlin",
    "Australia/Sydney",
    "Australia/Lord_Howe", // a 30-minute DST shift
    "America/Santiago",
    "America/St_Johns", // a half-hour offset with DST
    "Asia/Kolkata",
    "Pacific/Chatham", // +12:45 / +13:45
];

fn any_instant() -> impl Strategy<Value = DateTime<Utc>> {
    // 2024-01-01 .. 2030-12-31, to the second.
    (1_704_067_200i64..1_924_905_600).prop_map(|s| DateTime::from_timestamp(s, 0).unwrap())
}

/// The instants of 2026 at which `zone`'s offset changes, found by scanning it hourly.
fn transitions_2026(zone: &str) -> Vec<DateTime<Utc>> {
    static CACHE: std::sync::OnceLock<std::collections::HashMap<&'static str, Vec<DateTime<Utc>>>> =
        std::sync::OnceLock::new();
    let all = CACHE.get_or_init(|| {
        ZONES
            .iter()
            .map(|z| {
                let tz: Tz = z.parse().unwrap();
                let mut out = Vec::new();
                let mut at = t("2026-01-01T00:00:00Z");
                while at < t("2027-01-01T00:00:00Z") {
                    let next = at + TimeDelta::minutes(15);
                    if offset_at(tz, at) != offset_at(tz, next) {
                        out.push(next);
                    }
                    at = next;
                }
                (*z, out)
            })
            .collect()
    });
    all[zone].clone()
}

/// A zone and an instant: half of them within four hours of one of the zone's 2026
/// clock changes, where the DST rules are tested.
fn zone_and_instant() -> impl Strategy<Value = (&'static str, DateTime<Utc>)> {
    (
        proptest::sample::select(ZONES),
        any_instant(),
        any::<prop::sample::Index>(),
        -14_400i64..14_400,
        any::<bool>(),
    )
        .prop_map(|(zone, random, which, offset_s, near_change)| {
            let changes = transitions_2026(zone);
            if near_change && !changes.is_empty() {
                (
                    zone,
                    changes[which.index(changes.len())] + TimeDelta::seconds(offset_s),
                )
            } else {
                (zone, random)
            }
        })
}

fn offset_at(tz: Tz, at: DateTime<Utc>) -> i32 {
    tz.offset_from_utc_datetime(&at.naive_utc())
        .fix()
        .local_minus_utc()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Each fire is strictly after the previous one (and the first after the start), and
    /// its local time in its zone matches the expression's fields; the one exception is a
    /// fixed-time job moved to the end of a spring-forward gap, on a matching day.
    #[test]
    fn fires_increase_and_match_their_fields(
        e in expr(),
        (zone, start) in zone_and_instant(),
    ) {
        let tz: Tz = zone.parse().unwrap();
        let cron = match CronSchedule::parse(&e.text(), zone) {
            Ok(c) => c,
            Err(InvalidSchedule::InvalidCron { message, .. }) if message.contains("no date") => {
                return Ok(()); // e.g. 31 in months of 30 days only
            }
            Err(other) => panic!("{}: {other}", e.text()),
        };
        let mut previous = start;
        for _ in 0..6 {
            let Some(next) = cron.next_after(previous) else { break };
            prop_assert!(next > previous, "{} in {zone}: {next} not after {previous}", e.text());
            let local = next.with_timezone(&tz);
            if !e.matches_local(&local) {
                let gap_end = offset_at(tz, next - TimeDelta::seconds(1)) < offset_at(tz, next);
                prop_assert!(
                    cron.is_fixed_time() && gap_end && e.day_matches(&local),
                    "{} in {zone}: fire {next} ({local}) does not match its fields",
                    e.text()
                );
            }
            previous = next;
        }
    }

    /// Nothing that should fire is skipped: between a start and its next fire (up to two
    /// days), no minute's local time matches, except the second coming of a fixed-time
    /// job's time in a repeated hour.
    #[test]
    fn no_matching_minute_is_skipped(
        e in expr(),
        (zone, start) in zone_and_instant(),
    ) {
        let tz: Tz = zone.parse().unwrap();
        let Ok(cron) = CronSchedule::parse(&e.text(), zone) else { return Ok(()) };
        let Some(next) = cron.next_after(start) else { return Ok(()) };
        let first_minute = start.with_second(0).unwrap() + TimeDelta::minutes(1);
        let end = next.min(start + TimeDelta::days(2));
        let mut m = first_minute;
        while m < end {
            let local = m.with_timezone(&tz);
            if e.matches_local(&local) {
                let naive = local.naive_local();
                let second_coming = tz.from_local_datetime(&naive).earliest().unwrap() < m;
                prop_assert!(
                    cron.is_fixed_time() && second_coming,
                    "{} in {zone}: {m} ({local}) matches but the next fire after {start} is {next}",
                    e.text()
                );
            }
            m += TimeDelta::minutes(1);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]

    /// Around each 2026 clock change of each zone, the fires of a daily expression are
    /// exactly what the DST rule says, computed without croner: an interval job fires at
    /// every instant whose local time matches; a fixed-time job fires once a local day, at
    /// the first coming of its time, or at the end of the gap that swallowed it.
    #[test]
    fn around_clock_changes_fires_are_exactly_the_rules(
        minute in field(0, 59),
        hour in field(0, 23),
        zone in proptest::sample::select(ZONES),
        which in any::<prop::sample::Index>(),
    ) {
        let changes = transitions_2026(zone);
        prop_assume!(!changes.is_empty());
        let change = changes[which.index(changes.len())];
        let tz: Tz = zone.parse().unwrap();
        let every_day = |text: &str, lo: u32, hi: u32| Field { text: text.into(), values: (lo..=hi).collect() };
        let e = Expr { minute, hour, dom: every_day("*", 1, 31), month: every_day("*", 1, 12), dow: every_day("*", 0, 6) };
        let cron = CronSchedule::parse(&e.text(), zone).unwrap();
        let (from, until) = (change - TimeDelta::hours(5), change + TimeDelta::hours(5));

        let mut got = Vec::new();
        let mut cursor = from;
        while let Some(next) = cron.next_after(cursor) {
            if next > until { break; }
            got.push(next);
            cursor = next;
        }

        let mut expected = Vec::new();
        if cron.is_fixed_time() {
            let (h, m) = (e.hour.values[0], e.minute.values[0]);
            let mut day = from.with_timezone(&tz).date_naive() - TimeDelta::days(1);
            while day <= until.with_timezone(&tz).date_naive() {
                let wall = day.and_hms_opt(h, m, 0).unwrap();
                let at = match tz.from_local_datetime(&wall) {
                    chrono::LocalResult::Single(a) | chrono::LocalResult::Ambiguous(a, _) => a.with_timezone(&Utc),
                    chrono::LocalResult::None => change, // swallowed by this change's gap
                };
                if at > from && at <= until { expected.push(at); }
                day = day.succ_opt().unwrap();
            }
        } else {
            let mut m = from + TimeDelta::minutes(1);
            while m <= until {
                if e.matches_local(&m.with_timezone(&tz)) { expected.push(m); }
                m += TimeDelta::minutes(1);
            }
        }
        expected.sort();
        prop_assert_eq!(got, expected, "{} in {} around {}", e.text(), zone, change);
    }
}

#[test]
fn the_generated_dates_used_above_are_the_2026_transitions() {
    // Guards the DST tests: if the zone data changed, they would test nothing.
    let ny: Tz = "America/New_York".parse().unwrap();
    let d = NaiveDate::from_ymd_opt(2026, 3, 8)
        .unwrap()
        .and_hms_opt(2, 30, 0)
        .unwrap();
    assert!(
        ny.from_local_datetime(&d).single().is_none(),
        "02:30 is skipped"
    );
    let d = NaiveDate::from_ymd_opt(2026, 11, 1)
        .unwrap()
        .and_hms_opt(1, 30, 0)
        .unwrap();
    assert!(ny.from_local_datetime(&d).earliest() != ny.from_local_datetime(&d).latest());
}
