//! Tests of the schedule model: transitions, executions, validation and every decision.

use chrono::{DateTime, Utc};

use super::*;

fn ms(s: &str) -> Millis {
    s.parse::<DateTime<Utc>>().unwrap().timestamp_millis()
}

const MIN: i64 = 60_000;
const GRACE: i64 = DEFAULT_GRACE_PERIOD_MS;

/// An active cron schedule, every day at 09:00 UTC, next at 2026-12-01 09:00.
fn daily() -> ScheduleRecord {
    let timing = validate_timing(
        &TimingRequest {
            schedule_type: ScheduleType::Cron,
            cron_expression: Some("0 9 * * *"),
            ..Default::default()
        },
        ms("2026-12-01T08:00:00Z"),
    )
    .unwrap();
    created(timing)
}

fn created(timing: Timing) -> ScheduleRecord {
    let event = NewSchedule {
        id: "sched-1".into(),
        timing,
        missed_run_policy: MissedRunPolicy::Skip,
        overlap_policy: OverlapPolicy::Skip,
        after_schedule_id: None,
        target: TargetKind::Task,
        template: serde_json::json!({"prompt": "run the nightly checks"}),
    }
    .created(ms("2026-12-01T08:00:00Z"));
    apply(None, &event).unwrap()
}

fn one_time(at: &str) -> ScheduleRecord {
    created(
        validate_timing(
            &TimingRequest {
                schedule_type: ScheduleType::OneTime,
                scheduled_at: Some(at),
                ..Default::default()
            },
            ms("2026-12-01T08:00:00Z"),
        )
        .unwrap(),
    )
}

fn ctx(now: Millis) -> DueContext<'static> {
    DueContext {
        now,
        grace_ms: GRACE,
        followed: None,
    }
}

fn fire_plan(d: Decision) -> FirePlan {
    match d {
        Decision::Fire(plan) => *plan,
        other => panic!("expected a fire, got {other:?}"),
    }
}

fn recorded(d: Decision) -> Vec<ScheduleEvent> {
    match d {
        Decision::Record(events) => events,
        other => panic!("expected events to record, got {other:?}"),
    }
}

fn fold(s: &ScheduleRecord, events: &[ScheduleEvent]) -> ScheduleRecord {
    events
        .iter()
        .fold(s.clone(), |acc, e| apply(Some(&acc), e).unwrap())
}

/// Fires `s` as the actor would and returns the new record.
fn fire(s: &ScheduleRecord, now: Millis, exec: &str) -> ScheduleRecord {
    let plan = fire_plan(decide(s, &ctx(now)));
    let launched = Launched {
        task_id: Some(format!("task-{exec}")),
        ..Default::default()
    };
    fold(s, &plan.events(now, exec, launched))
}

fn ended(s: &ScheduleRecord, exec: &str, at: Millis) -> ScheduleRecord {
    fold(
        s,
        &[ScheduleEvent::ExecutionEnded {
            at,
            execution_id: exec.into(),
            status: ExecutionStatus::Completed,
        }],
    )
}

// --- creation and validation ---------------------------------------------------------------

#[test]
fn a_cron_schedule_has_its_next_run_at_creation() {
    let s = daily();
    assert_eq!(s.status, ScheduleStatus::Active);
    assert_eq!(s.timezone, "UTC");
    assert_eq!(s.next_run_at, Some(ms("2026-12-01T09:00:00Z")));
    assert_eq!(s.run_count, 0);
}

#[test]
fn a_one_time_schedule_given_a_local_time_reads_it_in_its_zone() {
    let t = validate_timing(
        &TimingRequest {
            schedule_type: ScheduleType::OneTime,
            scheduled_at: Some("2026-12-02T09:00"),
            timezone: Some("Europe/Berlin"),
            ..Default::default()
        },
        ms("2026-12-01T00:00:00Z"),
    )
    .unwrap();
    assert_eq!(t.next_run_at, ms("2026-12-02T08:00:00Z"));
    assert_eq!(t.scheduled_at, Some(ms("2026-12-02T08:00:00Z")));
}

#[test]
fn validation_refuses_each_bad_input_saying_what_was_wrong() {
    let now = ms("2026-12-01T00:00:00Z");
    let cron = |expr: &'static str| TimingRequest {
        schedule_type: ScheduleType::Cron,
        cron_expression: Some(expr),
        ..Default::default()
    };
    let at = |text: &'static str| TimingRequest {
        schedule_type: ScheduleType::OneTime,
        scheduled_at: Some(text),
        ..Default::default()
    };
    let cases: Vec<(TimingRequest<'_>, &str)> = vec![
        (cron("0 25 * * *"), "invalid cron expression '0 25 * * *'"),
        (
            TimingRequest {
                timezone: Some("Europe/Atlantis"),
                ..cron("0 9 * * *")
            },
            "unknown time zone 'Europe/Atlantis'",
        ),
        (
            TimingRequest {
                schedule_type: ScheduleType::Cron,
                ..Default::default()
            },
            "needs cronExpression",
        ),
        (
            TimingRequest {
                schedule_type: ScheduleType::OneTime,
                ..Default::default()
            },
            "needs scheduledAt",
        ),
        (
            at("2026-11-30T23:00:00Z"),
            "scheduledAt 2026-11-30T23:00:00Z is in the past",
        ),
        (
            at("tomorrow at nine"),
            "scheduledAt 'tomorrow at nine' is not an ISO-8601 time",
        ),
        (
            TimingRequest {
                timezone: Some("America/New_York"),
                ..at("2027-03-14T02:30")
            },
            "does not exist in America/New_York",
        ),
        (
            TimingRequest {
                expires_at: Some("2026-11-01T00:00:00Z"),
                ..cron("0 9 * * *")
            },
            "expiresAt 2026-11-01T00:00:00Z is in the past",
        ),
        (
            TimingRequest {
                expires_at: Some("2026-12-01T05:00:00Z"),
                ..cron("0 9 * * *")
            },
            "comes before the first run at 2026-12-01T09:00:00Z",
        ),
        (
            TimingRequest {
                max_runs: Some(0),
                ..cron("0 9 * * *")
            },
            "maxRuns must be 1 or more (got 0)",
        ),
        (
            TimingRequest {
                scheduled_at: Some("2026-12-02T00:00:00Z"),
                ..cron("0 9 * * *")
            },
            "scheduledAt is for one_time schedules",
        ),
        (
            TimingRequest {
                cron_expression: Some("0 9 * * *"),
                ..at("2026-12-02T00:00:00Z")
            },
            "cronExpression is for cron schedules",
        ),
    ];
    for (req, needle) in cases {
        let err = validate_timing(&req, now).unwrap_err().to_string();
        assert!(err.contains(needle), "{req:?}: {err}");
    }
}

#[test]
fn pipelines_have_two_to_twenty_steps() {
    assert!(validate_pipeline_steps(2).is_ok());
    assert!(validate_pipeline_steps(20).is_ok());
    for n in [0, 1, 21] {
        let err = validate_pipeline_steps(n).unwrap_err().to_string();
        assert!(err.contains(&format!("got {n}")), "{err}");
    }
}

#[test]
fn records_and_events_use_the_originals_keys_and_round_trip() {
    let s = daily();
    let json = serde_json::to_value(&s).unwrap();
    for key in [
        "scheduleType",
        "cronExpression",
        "scheduledAt",
        "timezone",
        "missedRunPolicy",
        "overlapPolicy",
        "maxRuns",
        "runCount",
        "expiresAt",
        "afterScheduleId",
        "status",
        "nextRunAt",
        "lastRunAt",
        "bufferedRun",
    ] {
        assert!(json.get(key).is_some(), "missing {key}: {json}");
    }
    assert_eq!(json["scheduleType"], "cron");
    assert_eq!(json["overlapPolicy"], "skip");
    assert_eq!(
        serde_json::to_value(OverlapPolicy::BufferOne).unwrap(),
        "bufferOne"
    );
    assert_eq!(
        serde_json::to_value(ScheduleType::OneTime).unwrap(),
        "one_time"
    );
    assert_eq!(serde_json::from_value::<ScheduleRecord>(json).unwrap(), s);
    let event = ScheduleEvent::Fired {
        at: 1,
        scheduled_for: 1,
        execution_id: "e".into(),
        launched: Launched::default(),
        next_run_at: Some(2),
        buffered: false,
        manual: false,
    };
    let text = serde_json::to_string(&event).unwrap();
    assert!(
        text.contains("\"type\":\"fired\"") && text.contains("scheduledFor"),
        "{text}"
    );
    assert_eq!(serde_json::from_str::<ScheduleEvent>(&text).unwrap(), event);
}

// --- firing ---------------------------------------------------------------------------------

#[test]
fn not_due_waits_until_the_next_run() {
    let s = daily();
    assert_eq!(
        decide(&s, &ctx(ms("2026-12-01T08:30:00Z"))),
        Decision::WaitUntil(ms("2026-12-01T09:00:00Z"))
    );
}

#[test]
fn due_fires_and_moves_to_the_next_cron_time() {
    let s = daily();
    let now = ms("2026-12-01T09:00:00.300Z");
    let plan = fire_plan(decide(&s, &ctx(now)));
    assert_eq!(plan.scheduled_for, ms("2026-12-01T09:00:00Z"));
    assert_eq!(plan.next_run_at, Some(ms("2026-12-02T09:00:00Z")));
    assert_eq!(plan.complete_reason, None);
    let s = fire(&s, now, "exec-1");
    assert_eq!(s.run_count, 1);
    assert_eq!(s.last_run_at, Some(now));
    assert_eq!(s.running, vec!["exec-1".to_string()]);
    assert_eq!(s.status, ScheduleStatus::Active);
}

#[test]
fn a_one_time_schedule_completes_when_it_fires() {
    let s = one_time("2026-12-01T10:00:00Z");
    let s = fire(&s, ms("2026-12-01T10:00:00Z"), "exec-1");
    assert_eq!(s.status, ScheduleStatus::Completed);
    assert_eq!(s.reason.as_deref(), Some("its one-time run fired"));
    assert_eq!(s.next_run_at, None);
    assert_eq!(decide(&s, &ctx(ms("2026-12-02T00:00:00Z"))), Decision::Idle);
}

#[test]
fn max_runs_completes_the_schedule_with_its_last_run() {
    let mut s = daily();
    s.max_runs = Some(2);
    s.overlap_policy = OverlapPolicy::AllowAll;
    let s = fire(&s, ms("2026-12-01T09:00:00Z"), "e1");
    assert_eq!(s.status, ScheduleStatus::Active);
    let s = fire(&s, ms("2026-12-02T09:00:00Z"), "e2");
    assert_eq!(s.status, ScheduleStatus::Completed);
    assert_eq!(s.run_count, 2);
    assert_eq!(s.reason.as_deref(), Some("reached maxRuns (2)"));
}

#[test]
fn expiry_is_checked_before_firing_never_after() {
    let mut s = daily();
    s.expires_at = Some(ms("2026-12-01T09:00:00Z"));
    // Due and expired at the same instant: it expires, nothing fires (W17).
    let events = recorded(decide(&s, &ctx(ms("2026-12-01T09:00:00Z"))));
    assert_eq!(
        events,
        vec![ScheduleEvent::Expired {
            at: ms("2026-12-01T09:00:00Z")
        }]
    );
    let s2 = fold(&s, &events);
    assert_eq!(s2.status, ScheduleStatus::Expired);
    assert_eq!(s2.next_run_at, None);

    // An expiry before the next run is waited for, not the run.
    let mut s = daily();
    s.expires_at = Some(ms("2026-12-01T08:45:00Z"));
    assert_eq!(
        decide(&s, &ctx(ms("2026-12-01T08:30:00Z"))),
        Decision::WaitUntil(ms("2026-12-01T08:45:00Z"))
    );
}

#[test]
fn a_paused_schedule_does_not_fire_but_still_expires() {
    let mut s = daily();
    s.expires_at = Some(ms("2026-12-05T00:00:00Z"));
    let s = fold(&s, &[plan_pause(&s, ms("2026-12-01T08:10:00Z")).unwrap()]);
    assert_eq!(
        decide(&s, &ctx(ms("2026-12-01T09:00:00Z"))),
        Decision::WaitUntil(ms("2026-12-05T00:00:00Z"))
    );
    let events = recorded(decide(&s, &ctx(ms("2026-12-05T00:00:00Z"))));
    assert_eq!(fold(&s, &events).status, ScheduleStatus::Expired);
}

// --- missed runs ----------------------------------------------------------------------------

#[test]
fn within_the_grace_period_a_late_occurrence_still_fires() {
    let s = daily();
    let now = ms("2026-12-01T09:04:59Z");
    let plan = fire_plan(decide(&s, &ctx(now)));
    assert_eq!(plan.scheduled_for, ms("2026-12-01T09:00:00Z"));
}

#[test]
fn missed_with_skip_records_it_and_moves_to_the_next_time_after_now() {
    let s = daily();
    let now = ms("2026-12-04T12:00:00Z"); // three days and three occurrences late
    let events = recorded(decide(&s, &ctx(now)));
    assert_eq!(
        events,
        vec![ScheduleEvent::Missed {
            at: now,
            scheduled_for: ms("2026-12-01T09:00:00Z"),
            next_run_at: Some(ms("2026-12-05T09:00:00Z")),
            policy: MissedRunPolicy::Skip,
        }]
    );
    let exec = execution_for("sched-1", "x1", &events[0]).unwrap();
    assert_eq!(exec.status, ExecutionStatus::Missed);
    assert!(exec.reason.unwrap().contains("missedRunPolicy skip"));
    let s = fold(&s, &events);
    assert_eq!(s.status, ScheduleStatus::Active);
    assert_eq!(s.run_count, 0);
}

#[test]
fn a_missed_one_time_schedule_with_skip_completes_without_running() {
    let s = one_time("2026-12-01T10:00:00Z");
    let events = recorded(decide(&s, &ctx(ms("2026-12-01T11:00:00Z"))));
    let s = fold(&s, &events);
    assert_eq!(s.status, ScheduleStatus::Completed);
    assert_eq!(s.run_count, 0);
    assert!(s.reason.unwrap().contains("was missed"));
}

#[test]
fn missed_with_catchup_fires_once_and_the_next_time_counts_from_now() {
    let mut s = daily();
    s.missed_run_policy = MissedRunPolicy::Catchup;
    let now = ms("2026-12-04T12:00:00Z");
    let plan = fire_plan(decide(&s, &ctx(now)));
    assert_eq!(
        plan.scheduled_for,
        ms("2026-12-01T09:00:00Z"),
        "the first missed one"
    );
    assert_eq!(
        plan.next_run_at,
        Some(ms("2026-12-05T09:00:00Z")),
        "not 12-02, 12-03, 12-04"
    );
    let s = fire(&s, now, "e1");
    assert_eq!(s.run_count, 1);
    let s = ended(&s, "e1", now + MIN);
    assert_eq!(
        decide(&s, &ctx(now + MIN)),
        Decision::WaitUntil(ms("2026-12-05T09:00:00Z")),
        "one catch-up run, not one per missed occurrence"
    );
}

#[test]
fn missed_with_fail_records_it_and_cancels_the_schedule() {
    let mut s = daily();
    s.missed_run_policy = MissedRunPolicy::Fail;
    let now = ms("2026-12-01T09:10:00Z");
    let events = recorded(decide(&s, &ctx(now)));
    let exec = execution_for("sched-1", "x1", &events[0]).unwrap();
    assert_eq!(exec.status, ExecutionStatus::Missed);
    let s = fold(&s, &events);
    assert_eq!(s.status, ScheduleStatus::Cancelled);
    assert_eq!(s.next_run_at, None);
    let reason = s.reason.unwrap();
    assert!(
        reason.contains("missed by 10 min") && reason.contains("fail"),
        "{reason}"
    );
}

#[test]
fn the_grace_period_is_the_callers() {
    let s = daily();
    let now = ms("2026-12-01T09:00:02Z");
    let tight = DueContext {
        grace_ms: 1_000,
        ..ctx(now)
    };
    assert!(matches!(decide(&s, &tight), Decision::Record(_)));
    assert!(matches!(decide(&s, &ctx(now)), Decision::Fire(_)));
}

// --- overlap ---------------------------------------------------------------------------------

fn running_daily(policy: OverlapPolicy) -> ScheduleRecord {
    let mut s = daily();
    s.overlap_policy = policy;
    fire(&s, ms("2026-12-01T09:00:00Z"), "e1")
}

#[test]
fn overlap_skip_records_a_skipped_execution_and_the_next_time_follows() {
    let s = running_daily(OverlapPolicy::Skip);
    let now = ms("2026-12-02T09:00:00Z");
    let events = recorded(decide(&s, &ctx(now)));
    let exec = execution_for("sched-1", "x2", &events[0]).unwrap();
    assert_eq!(exec.status, ExecutionStatus::Skipped);
    assert!(exec.reason.unwrap().contains("execution e1"));
    let s = fold(&s, &events);
    assert_eq!(s.next_run_at, Some(ms("2026-12-03T09:00:00Z")));
    assert_eq!(s.run_count, 1);
    // Held across restarts: the running execution is in the record, not in memory.
    let restored: ScheduleRecord =
        serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert!(matches!(
        decide(&restored, &ctx(ms("2026-12-03T09:00:00Z"))),
        Decision::Record(_)
    ));
}

#[test]
fn overlap_buffer_one_holds_one_run_and_fires_it_when_the_running_one_ends() {
    let s = running_daily(OverlapPolicy::BufferOne);
    let events = recorded(decide(&s, &ctx(ms("2026-12-02T09:00:00Z"))));
    let s = fold(&s, &events);
    assert_eq!(s.buffered_run, Some(ms("2026-12-02T09:00:00Z")));
    assert_eq!(s.next_run_at, Some(ms("2026-12-03T09:00:00Z")));
    // A second occurrence while one is held is skipped.
    let events = recorded(decide(&s, &ctx(ms("2026-12-03T09:00:00Z"))));
    assert!(matches!(events[0], ScheduleEvent::Skipped { .. }));
    let s = fold(&s, &events);
    assert_eq!(s.buffered_run, Some(ms("2026-12-02T09:00:00Z")));
    // While e1 runs, the held run waits for the next time (or e1's end).
    assert_eq!(
        decide(&s, &ctx(ms("2026-12-03T10:00:00Z"))),
        Decision::WaitUntil(ms("2026-12-04T09:00:00Z"))
    );
    // e1 ends: the held run fires now, the timing unchanged.
    let end = ms("2026-12-03T10:00:00Z");
    let s = ended(&s, "e1", end);
    let plan = fire_plan(decide(&s, &ctx(end)));
    assert!(plan.buffered);
    assert_eq!(plan.scheduled_for, ms("2026-12-02T09:00:00Z"));
    assert_eq!(plan.next_run_at, Some(ms("2026-12-04T09:00:00Z")));
    let s = fold(&s, &plan.events(end, "e2", Launched::default()));
    assert_eq!(s.buffered_run, None);
    assert_eq!(s.running, vec!["e2".to_string()]);
}

#[test]
fn overlap_allow_all_fires_beside_the_running_one() {
    let s = running_daily(OverlapPolicy::AllowAll);
    let plan = fire_plan(decide(&s, &ctx(ms("2026-12-02T09:00:00Z"))));
    assert!(plan.cancel_running.is_empty());
    let s = fold(
        &s,
        &plan.events(ms("2026-12-02T09:00:00Z"), "e2", Launched::default()),
    );
    assert_eq!(s.running, vec!["e1".to_string(), "e2".to_string()]);
}

#[test]
fn overlap_cancel_other_fires_and_names_the_runs_to_cancel() {
    let s = running_daily(OverlapPolicy::CancelOther);
    let plan = fire_plan(decide(&s, &ctx(ms("2026-12-02T09:00:00Z"))));
    assert_eq!(plan.cancel_running, vec!["e1".to_string()]);
}

// --- afterSchedule ------------------------------------------------------------------------------

fn followed(status: ExecutionStatus) -> ExecutionRecord {
    ExecutionRecord {
        id: "other-exec".into(),
        schedule_id: "sched-0".into(),
        scheduled_for: ms("2026-12-01T08:00:00Z"),
        fired_at: ms("2026-12-01T08:00:00Z"),
        status,
        task_id: Some("task-other".into()),
        reason: (status == ExecutionStatus::Failed).then(|| "exited with code 1".into()),
        ..Default::default()
    }
}

#[test]
fn after_schedule_waits_for_an_unfinished_run_proceeds_after_a_completed_one() {
    let mut s = daily();
    s.after_schedule_id = Some("sched-0".into());
    let now = ms("2026-12-01T09:00:00Z");
    let unfinished = followed(ExecutionStatus::Triggered);
    let plan = fire_plan(decide(
        &s,
        &DueContext {
            followed: Some(&unfinished),
            ..ctx(now)
        },
    ));
    assert_eq!(
        plan.wait_for.as_ref().map(|e| e.id.as_str()),
        Some("other-exec")
    );

    let done = followed(ExecutionStatus::Completed);
    let plan = fire_plan(decide(
        &s,
        &DueContext {
            followed: Some(&done),
            ..ctx(now)
        },
    ));
    assert_eq!(plan.wait_for, None);
    // Nothing to follow yet: proceed.
    assert!(matches!(decide(&s, &ctx(now)), Decision::Fire(_)));
}

#[test]
fn after_schedule_refuses_the_run_naming_a_failed_or_cancelled_predecessor() {
    for status in [ExecutionStatus::Failed, ExecutionStatus::Cancelled] {
        let mut s = daily();
        s.after_schedule_id = Some("sched-0".into());
        let now = ms("2026-12-01T09:00:00Z");
        let prev = followed(status);
        let events = recorded(decide(
            &s,
            &DueContext {
                followed: Some(&prev),
                ..ctx(now)
            },
        ));
        let exec = execution_for("sched-1", "x", &events[0]).unwrap();
        assert_eq!(exec.status, ExecutionStatus::Cancelled);
        let reason = exec.reason.unwrap();
        assert!(
            reason.contains("schedule sched-0") && reason.contains(status.as_str()),
            "{reason}"
        );
        let s = fold(&s, &events);
        assert_eq!(s.next_run_at, Some(ms("2026-12-02T09:00:00Z")));
        assert_eq!(s.run_count, 1);
        assert!(s.running.is_empty());
    }
}

/// The followed run ended between `decide` (which saw it running and planned to wait for
/// it) and the fire: a failed or cancelled end refuses the occurrence as `decide` would
/// have, naming it; a completed end fires with nothing left to wait for.
#[test]
fn a_followed_run_that_ended_after_the_decision_is_judged_by_how_it_ended() {
    let mut s = daily();
    s.after_schedule_id = Some("sched-0".into());
    let now = ms("2026-12-01T09:00:00Z");
    let running = followed(ExecutionStatus::Triggered);
    let plan = fire_plan(decide(
        &s,
        &DueContext {
            followed: Some(&running),
            ..ctx(now)
        },
    ));
    assert!(plan.wait_for.is_some());

    for status in [ExecutionStatus::Failed, ExecutionStatus::Cancelled] {
        let ended = followed(status);
        let events = recorded(follow_ended(&s, now, &ended, plan.clone()));
        let exec = execution_for("sched-1", "x", &events[0]).unwrap();
        assert_eq!(exec.status, ExecutionStatus::Cancelled);
        let reason = exec.reason.unwrap();
        assert!(
            reason.contains("schedule sched-0") && reason.contains(status.as_str()),
            "{reason}"
        );
    }
    let completed = followed(ExecutionStatus::Completed);
    let fired = fire_plan(follow_ended(&s, now, &completed, plan.clone()));
    assert_eq!(fired.wait_for, None);
    assert_eq!(fired.scheduled_for, plan.scheduled_for);
}

// --- commands -------------------------------------------------------------------------------

#[test]
fn pause_only_when_active() {
    let s = daily();
    let paused = fold(&s, &[plan_pause(&s, 1).unwrap()]);
    assert_eq!(paused.status, ScheduleStatus::Paused);
    let err = plan_pause(&paused, 2).unwrap_err();
    assert_eq!(
        err.to_string(),
        "schedule sched-1 is not active (status: paused); only an active schedule can be paused"
    );
    assert!(
        apply(
            Some(&paused),
            &ScheduleEvent::Paused {
                at: 3,
                reason: None
            }
        )
        .is_err()
    );
}

#[test]
fn resume_computes_the_next_cron_time_from_now() {
    let s = daily();
    let paused = fold(&s, &[plan_pause(&s, ms("2026-12-01T08:30:00Z")).unwrap()]);
    assert!(
        plan_resume(&s, 0).is_err(),
        "an active schedule cannot be resumed"
    );
    let now = ms("2026-12-03T12:00:00Z");
    let resumed = fold(&paused, &[plan_resume(&paused, now).unwrap()]);
    assert_eq!(resumed.status, ScheduleStatus::Active);
    assert_eq!(resumed.next_run_at, Some(ms("2026-12-04T09:00:00Z")));
    assert_eq!(
        decide(&resumed, &ctx(now)),
        Decision::WaitUntil(ms("2026-12-04T09:00:00Z"))
    );
}

#[test]
fn cancelling_a_finished_schedule_is_refused() {
    let s = daily();
    let cancelled = fold(&s, &[plan_cancel(&s, 5, Some("not needed")).unwrap()]);
    assert_eq!(cancelled.status, ScheduleStatus::Cancelled);
    assert_eq!(
        cancelled.reason.as_deref(),
        Some("cancelled by the user: not needed")
    );
    let err = plan_cancel(&cancelled, 6, None).unwrap_err().to_string();
    assert!(err.contains("already cancelled"), "{err}");
    let done = fire(
        &one_time("2026-12-01T10:00:00Z"),
        ms("2026-12-01T10:00:00Z"),
        "e",
    );
    let err = plan_cancel(&done, 7, None).unwrap_err().to_string();
    assert!(err.contains("already completed"), "{err}");
}

#[test]
fn a_manual_run_fires_now_without_changing_the_timing() {
    let s = daily();
    let now = ms("2026-12-01T08:30:00Z");
    let plan = plan_manual_fire(&s, now).unwrap();
    let s2 = fold(&s, &plan.events(now, "m1", Launched::default()));
    assert_eq!(s2.next_run_at, s.next_run_at);
    assert_eq!(s2.run_count, 1);
    let exec = execution_for(
        "sched-1",
        "m1",
        &plan.events(now, "m1", Launched::default())[0],
    );
    assert_eq!(exec.unwrap().reason.as_deref(), Some("fired by hand"));
    // Allowed while paused, refused once finished.
    let paused = fold(&s, &[plan_pause(&s, now).unwrap()]);
    let plan = plan_manual_fire(&paused, now).unwrap();
    assert!(
        apply(
            Some(&paused),
            &plan.events(now, "m2", Launched::default())[0]
        )
        .is_ok()
    );
    let cancelled = fold(&s, &[plan_cancel(&s, now, None).unwrap()]);
    assert!(plan_manual_fire(&cancelled, now).is_err());
}

// --- transitions --------------------------------------------------------------------------

#[test]
fn a_paused_schedule_does_not_accept_a_timed_fire() {
    let s = daily();
    let paused = fold(&s, &[plan_pause(&s, 1).unwrap()]);
    let timed = ScheduleEvent::Fired {
        at: 2,
        scheduled_for: 2,
        execution_id: "e".into(),
        launched: Launched::default(),
        next_run_at: None,
        buffered: false,
        manual: false,
    };
    let err = apply(Some(&paused), &timed).unwrap_err();
    assert_eq!(
        err.to_string(),
        "schedule sched-1: cannot apply 'fired' in state paused"
    );
}

#[test]
fn finished_schedules_accept_only_the_end_of_their_runs() {
    let s = fire(
        &one_time("2026-12-01T10:00:00Z"),
        ms("2026-12-01T10:00:00Z"),
        "e1",
    );
    assert_eq!(s.status, ScheduleStatus::Completed);
    for event in [
        ScheduleEvent::Paused {
            at: 1,
            reason: None,
        },
        ScheduleEvent::Resumed {
            at: 1,
            next_run_at: None,
        },
        ScheduleEvent::Cancelled {
            at: 1,
            reason: "x".into(),
        },
        ScheduleEvent::Expired { at: 1 },
        ScheduleEvent::Completed {
            at: 1,
            reason: "x".into(),
        },
    ] {
        assert!(apply(Some(&s), &event).is_err(), "{event:?}");
    }
    let s = ended(&s, "e1", 5);
    assert!(s.running.is_empty());
    // The same run cannot end twice.
    assert!(
        apply(
            Some(&s),
            &ScheduleEvent::ExecutionEnded {
                at: 6,
                execution_id: "e1".into(),
                status: ExecutionStatus::Completed
            }
        )
        .is_err()
    );
}

#[test]
fn only_created_starts_a_schedule() {
    let ev = ScheduleEvent::Expired { at: 1 };
    assert_eq!(
        apply(None, &ev).unwrap_err().to_string(),
        "schedule : cannot apply 'expired' in state (none)"
    );
    let mut s = daily();
    s.status = ScheduleStatus::Paused;
    assert!(
        apply(
            None,
            &ScheduleEvent::Created {
                schedule: Box::new(s)
            }
        )
        .is_err()
    );
}

#[test]
fn executions_end_once_from_triggered() {
    let fired = ScheduleEvent::Fired {
        at: 10,
        scheduled_for: 9,
        execution_id: "e1".into(),
        launched: Launched {
            pipeline_id: Some("pipe-1".into()),
            ..Default::default()
        },
        next_run_at: None,
        buffered: false,
        manual: false,
    };
    let row = execution_for("sched-1", "e1", &fired).unwrap();
    assert_eq!(row.status, ExecutionStatus::Triggered);
    assert_eq!(row.pipeline_id.as_deref(), Some("pipe-1"));
    let row = apply_execution(
        None,
        &ExecutionEvent::Recorded {
            execution: Box::new(row),
        },
    )
    .unwrap();
    let done = apply_execution(
        Some(&row),
        &ExecutionEvent::Ended {
            at: 20,
            status: ExecutionStatus::Failed,
            reason: Some("task failed: exited with code 2".into()),
        },
    )
    .unwrap();
    assert_eq!(done.status, ExecutionStatus::Failed);
    assert_eq!(done.ended_at, Some(20));
    let again = ExecutionEvent::Ended {
        at: 21,
        status: ExecutionStatus::Completed,
        reason: None,
    };
    assert!(apply_execution(Some(&done), &again).is_err());
    // A run does not end as skipped or missed; those rows are born final.
    let bad = ExecutionEvent::Ended {
        at: 21,
        status: ExecutionStatus::Skipped,
        reason: None,
    };
    assert!(apply_execution(Some(&row), &bad).is_err());
    assert!(ExecutionStatus::Skipped.is_final() && !ExecutionStatus::Triggered.is_final());
    assert!(execution_for("s", "e", &ScheduleEvent::Expired { at: 1 }).is_none());
}

#[test]
fn a_week_across_spring_forward_fires_once_a_day_driven_by_decisions_alone() {
    // The engine's loop, driven by decisions only: wait, fire, end, repeat — across the
    // 2026 New York spring-forward day, for a job at 02:30 local.
    let timing = validate_timing(
        &TimingRequest {
            schedule_type: ScheduleType::Cron,
            cron_expression: Some("30 2 * * *"),
            timezone: Some("America/New_York"),
            ..Default::default()
        },
        ms("2026-03-05T12:00:00Z"),
    )
    .unwrap();
    let mut s = created(timing);
    let mut now = ms("2026-03-05T12:00:00Z");
    let mut fired = Vec::new();
    for i in 0..7 {
        let Decision::WaitUntil(at) = decide(&s, &ctx(now)) else {
            panic!("expected to wait");
        };
        now = at;
        s = fire(&s, now, &format!("e{i}"));
        fired.push(now);
        s = ended(&s, &format!("e{i}"), now + MIN);
        now += MIN;
    }
    let shown: Vec<String> = fired
        .iter()
        .map(|m| {
            DateTime::from_timestamp_millis(*m)
                .unwrap()
                .with_timezone(&chrono_tz::America::New_York)
                .format("%m-%d %H:%M")
                .to_string()
        })
        .collect();
    assert_eq!(
        shown,
        [
            "03-06 02:30",
            "03-07 02:30",
            "03-08 03:00",
            "03-09 02:30",
            "03-10 02:30",
            "03-11 02:30",
            "03-12 02:30"
        ]
    );
    assert_eq!(s.run_count, 7);
}

#[test]
fn an_execution_ends_as_what_it_launched_ended_and_not_while_that_runs() {
    use crate::model::PipelineStatus;
    use crate::model::loops::LoopStatus;
    use crate::model::task::TaskStatus;
    assert_eq!(
        ExecutionStatus::of_task(TaskStatus::Completed),
        Some(ExecutionStatus::Completed)
    );
    assert_eq!(
        ExecutionStatus::of_task(TaskStatus::Failed),
        Some(ExecutionStatus::Failed)
    );
    assert_eq!(
        ExecutionStatus::of_task(TaskStatus::Cancelled),
        Some(ExecutionStatus::Cancelled)
    );
    for running in [TaskStatus::Blocked, TaskStatus::Queued, TaskStatus::Running] {
        assert_eq!(ExecutionStatus::of_task(running), None);
    }
    assert_eq!(
        ExecutionStatus::of_pipeline(PipelineStatus::Failed),
        Some(ExecutionStatus::Failed)
    );
    assert_eq!(ExecutionStatus::of_pipeline(PipelineStatus::Running), None);
    assert_eq!(
        ExecutionStatus::of_loop(LoopStatus::Completed),
        Some(ExecutionStatus::Completed)
    );
    assert_eq!(ExecutionStatus::of_loop(LoopStatus::Paused), None);
}
