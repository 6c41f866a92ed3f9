//! The journal's central invariant for loops, schedules and schedule executions: the
//! `loops`, `loop_iterations`, `schedules` and `schedule_runs` tables always equal the
//! fold of the `events` table (and the test's own model), for every event of each kind.
//!
//! `journal_fold.rs` checks tasks and pipelines; this test does the same for the kinds
//! the loop and schedule actors journal. The operations are driven by the pure models
//! themselves, as the actors drive them: a loop's next step comes from
//! `loops::decide_next` (start an iteration, end its tasks in any way, rate limits, the
//! eval, git settling, the end rules), a schedule's from `schedule::decide` under a test
//! clock that jumps (fires, skips and buffers by overlap policy, missed runs past the
//! grace period, `afterSchedule` refusals, expiry, completion), and the commands from
//! `plan_pause`/`plan_resume`/`plan_cancel`/`plan_manual_fire`. A fire is journaled as
//! the engine does it: the schedule's events and the execution row in ONE append, two
//! kinds in one transaction. Besides these, "wild" events (an iteration out of turn, a
//! fire of a cancelled schedule, ...) are put to `apply`: a refused one is never
//! journaled. Appends overlap (group commit) and the writer is restarted between
//! operations.
//!
//! At the end of each case the fold of `Store::events()` must equal every table and
//! the model; across all cases, every event name of the three kinds must have been
//! journaled at least once, so the generator cannot silently stop covering one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use backbeat_actors::journal::Store;
use backbeat_actors::model::loops::{
    self, Direction, EvalReport, IterationRecord, LoopEvent, LoopRecord, LoopStatus, NextStep,
    Strategy, TaskEnd, TaskEndKind, Verdict,
};
use backbeat_actors::model::schedule::{
    self, Decision, DueContext, ExecutionEvent, ExecutionRecord, ExecutionStatus, Launched,
    MissedRunPolicy, NewSchedule, OverlapPolicy, ScheduleEvent, ScheduleRecord, ScheduleType,
    TargetKind, TimingRequest,
};
use backbeat_actors::model::task::Usage;
use backbeat_actors::model::{Entity, Event, Record};
#[path = "support/journal.rs"]
mod journal_support;

use journal_support::Journal;
use proptest::prelude::*;
use proptest::strategy::Strategy as PropStrategy;
use proptest::test_runner::{Config, TestRng, TestRunner};

/// One operation: what to do, which entity (an index into the live ones), a free
/// argument that shapes it, and whether to wait for every queued append afterwards.
#[derive(Debug, Clone, Copy)]
struct Op {
    what: u8,
    pick: u16,
    arg: u16,
    settle: bool,
}

fn ops() -> impl PropStrategy<Value = Vec<Op>> {
    prop::collection::vec(
        (
            any::<u8>(),
            any::<u16>(),
            any::<u16>(),
            prop::bool::weighted(0.3),
        )
            .prop_map(|(what, pick, arg, settle)| Op {
                what,
                pick,
                arg,
                settle,
            }),
        100..300,
    )
}

const T0: i64 = 1_893_456_000_000; // 2030-01-01T00:00:00Z
const GRACE_MS: i64 = 120_000;

// ---------------------------------------------------------------------------------
// The model: what the tables must hold
// ---------------------------------------------------------------------------------

#[derive(Default)]
struct World {
    now: i64,
    next_id: u64,
    loops: BTreeMap<String, LoopRecord>,
    schedules: BTreeMap<String, ScheduleRecord>,
    runs: BTreeMap<String, ExecutionRecord>,
    /// Execution ids in the order they were recorded (the latest run of a schedule).
    run_order: Vec<String>,
    journaled: BTreeSet<String>,
    refused: usize,
    restarts: usize,
    mixed_appends: usize,
}

fn pick<V>(map: &BTreeMap<String, V>, i: u16) -> Option<(&String, &V)> {
    (!map.is_empty()).then(|| map.iter().nth(i as usize % map.len()).expect("in range"))
}

impl World {
    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}-{:08}", self.next_id)
    }

    /// Puts `event` to the model; an accepted one is journaled alone.
    fn loop_event(&mut self, journal: &mut Journal, id: &str, event: LoopEvent) {
        match LoopRecord::apply(self.loops.get(id), &event) {
            Ok(next) => {
                self.journaled.insert(loop_name(&event));
                self.loops.insert(id.to_string(), next.clone());
                journal.append(vec![LoopRecord::transition(event, next)]);
            }
            Err(_) => self.refused += 1,
        }
    }

    /// A schedule's events in order, with the execution rows they leave (new run ids)
    /// and `extra` transitions of executions, all in ONE append. Refused (nothing is
    /// journaled) if any event does not apply.
    fn schedule_events(
        &mut self,
        journal: &mut Journal,
        id: &str,
        events: Vec<ScheduleEvent>,
        extra: Vec<(String, ExecutionEvent)>,
    ) {
        let mut record = self.schedules.get(id).cloned();
        let mut transitions = Vec::new();
        let mut rows = Vec::new();
        let mut names = Vec::new();
        for event in events {
            let next = match ScheduleRecord::apply(record.as_ref(), &event) {
                Ok(next) => next,
                Err(_) => {
                    self.refused += 1;
                    return;
                }
            };
            let run_id = match &event {
                ScheduleEvent::Fired { execution_id, .. } => execution_id.clone(),
                _ => self.id("run"),
            };
            if let Some(row) = schedule::execution_for(id, &run_id, &event) {
                rows.push(row);
            }
            names.push(format!("schedule {}", event.name()));
            transitions.push(ScheduleRecord::transition(event, next.clone()));
            record = Some(next);
        }
        let mut runs = BTreeMap::new();
        for row in rows {
            let event = ExecutionEvent::Recorded {
                execution: Box::new(row.clone()),
            };
            let made = ExecutionRecord::apply(None, &event).expect("a new row applies");
            names.push(format!("run {}", event.name()));
            transitions.push(ExecutionRecord::transition(event, made.clone()));
            runs.insert(made.id.clone(), made);
        }
        for (run_id, event) in extra {
            let prev = runs.get(&run_id).or_else(|| self.runs.get(&run_id));
            let next = match ExecutionRecord::apply(prev, &event) {
                Ok(next) => next,
                Err(_) => {
                    self.refused += 1;
                    return;
                }
            };
            names.push(format!("run {}", event.name()));
            transitions.push(ExecutionRecord::transition(event, next.clone()));
            runs.insert(run_id, next);
        }
        if transitions.is_empty() {
            return;
        }
        if transitions
            .iter()
            .any(|t| t.kind() != transitions[0].kind())
        {
            self.mixed_appends += 1;
        }
        for name in names {
            self.journaled.insert(name);
        }
        for (run_id, run) in runs {
            if !self.runs.contains_key(&run_id) {
                self.run_order.push(run_id.clone());
            }
            self.runs.insert(run_id, run);
        }
        self.schedules
            .insert(id.to_string(), record.expect("at least one event"));
        journal.append(transitions);
    }

    fn apply_op(&mut self, op: Op, journal: &mut Journal) {
        match op.what % 24 {
            0 | 1 => self.create_loop(op, journal),
            2..=8 => self.advance_loop(op, journal),
            9 => self.loop_command(op, journal),
            10 | 11 => self.create_schedule(op, journal),
            12..=15 => self.step_schedule(op, journal),
            16 | 17 => self.end_run(op, journal),
            18 => self.schedule_command(op, journal),
            19 => self.wild(op, journal),
            20 | 21 => self.now += (op.arg as i64 % 400) * 1000,
            22 if op.pick.is_multiple_of(4) => {
                journal.restart();
                self.restarts += 1;
            }
            _ => journal.settle(),
        }
    }

    // --- loops -----------------------------------------------------------------

    fn create_loop(&mut self, op: Op, journal: &mut Journal) {
        let id = self.id("loop");
        let optimize = op.arg % 2 == 1;
        let git = op.arg.is_multiple_of(5);
        let record = LoopRecord {
            id: id.clone(),
            strategy: if optimize {
                Strategy::Optimize
            } else {
                Strategy::Retry
            },
            prompt: "make it better".into(),
            pipeline_steps: if op.arg.is_multiple_of(3) {
                vec!["lint".into(), "fix".into(), "test".into()][..2 + (op.pick as usize % 2)]
                    .to_vec()
            } else {
                Vec::new()
            },
            agent: "claude".into(),
            working_directory: "/work".into(),
            exit_condition: "cargo test".into(),
            eval_direction: optimize.then_some(if op.pick.is_multiple_of(2) {
                Direction::Maximize
            } else {
                Direction::Minimize
            }),
            eval_timeout: 60_000,
            max_iterations: (op.pick % 6) as u32,
            max_consecutive_failures: (op.arg % 4) as u32,
            cooldown_ms: if op.pick.is_multiple_of(3) { 5_000 } else { 0 },
            patience: (optimize && op.pick % 4 == 1).then_some(2),
            max_tokens: op.arg.is_multiple_of(7).then_some(5_000),
            git_branch: git.then(|| format!("loop-{}", self.next_id)),
            git_start_commit_sha: git.then(|| "a".repeat(40)),
            status: LoopStatus::Running,
            created_at: self.now,
            updated_at: self.now,
            ..Default::default()
        };
        let event = LoopEvent::Created {
            record: Box::new(record),
        };
        self.loop_event(journal, &id, event);
    }

    /// What the `LoopActor` would journal next for one loop.
    fn advance_loop(&mut self, op: Op, journal: &mut Journal) {
        let Some((id, l)) = pick(&self.loops, op.pick) else {
            return;
        };
        let (id, l) = (id.clone(), l.clone());
        let now = self.now;
        let event = match loops::decide_next(&l, now) {
            NextStep::Done => return,
            NextStep::Paused => LoopEvent::Resumed { at: now },
            NextStep::WaitUntil { at } => {
                self.now = at;
                return;
            }
            NextStep::Start { number } => {
                let steps = l.pipeline_steps.len().max(1);
                LoopEvent::IterationStarted {
                    at: now,
                    number,
                    task_ids: (0..steps).map(|_| self.id("task")).collect(),
                }
            }
            NextStep::AwaitTasks { number } => {
                let it = l.latest.as_ref().expect("an iteration awaits its tasks");
                let Some(task_id) = it.unended_task_ids().into_iter().next() else {
                    return;
                };
                if op.arg.is_multiple_of(9) && it.rate_limited_until.is_none() {
                    LoopEvent::RateLimited {
                        at: now,
                        number,
                        task_id,
                        until: now + 30_000,
                    }
                } else {
                    LoopEvent::TaskEnded {
                        at: now,
                        number,
                        task_id,
                        end: task_end(op.arg),
                    }
                }
            }
            NextStep::Evaluate { number, eval_id } => {
                if eval_id.is_none() && op.arg.is_multiple_of(2) {
                    LoopEvent::EvalStarted {
                        at: now,
                        number,
                        eval_id: self.id("eval"),
                    }
                } else {
                    LoopEvent::Evaluated {
                        at: now,
                        number,
                        report: report(&l, op.arg),
                    }
                }
            }
            NextStep::StopTasks { number, task_ids } => LoopEvent::TaskEnded {
                at: now,
                number,
                task_id: task_ids[0].clone(),
                end: TaskEnd {
                    kind: TaskEndKind::Cancelled,
                    reason: "the iteration's result is decided".into(),
                    exit_code: None,
                    usage: None,
                    rate_limited: false,
                    rate_limit_reset: None,
                },
            },
            NextStep::Settle { number, git } => LoopEvent::Settled {
                at: now,
                number,
                commit_sha: matches!(git, loops::GitStep::Commit { .. })
                    .then(|| format!("{:040x}", op.arg)),
                diff_summary: Some("1 file changed".into()),
            },
            NextStep::Finish { status, reason } => LoopEvent::Finished {
                at: now,
                status,
                reason,
            },
        };
        self.loop_event(journal, &id, event);
    }

    fn loop_command(&mut self, op: Op, journal: &mut Journal) {
        let Some((id, _)) = pick(&self.loops, op.pick) else {
            return;
        };
        let id = id.clone();
        let at = self.now;
        let event = match op.arg % 3 {
            0 => LoopEvent::Paused {
                at,
                force: op.arg.is_multiple_of(2),
            },
            1 => LoopEvent::Resumed { at },
            _ => LoopEvent::Cancelled {
                at,
                reason: "cancelled by the user".into(),
            },
        };
        self.loop_event(journal, &id, event);
    }

    // --- schedules -------------------------------------------------------------

    fn create_schedule(&mut self, op: Op, journal: &mut Journal) {
        let id = self.id("schedule");
        let iso = |ms: i64| {
            chrono::DateTime::from_timestamp_millis(ms)
                .expect("a valid instant")
                .to_rfc3339()
        };
        let one_time = op.arg.is_multiple_of(4);
        let at = iso(self.now + 60_000 * (1 + op.pick as i64 % 5));
        let expires = op
            .arg
            .is_multiple_of(7)
            .then(|| iso(self.now + 3 * 3_600_000));
        let cron = ["* * * * *", "*/2 * * * *", "30 * * * * *", "@hourly"][op.pick as usize % 4];
        let timing = schedule::validate_timing(
            &TimingRequest {
                schedule_type: if one_time {
                    ScheduleType::OneTime
                } else {
                    ScheduleType::Cron
                },
                cron_expression: (!one_time).then_some(cron),
                scheduled_at: one_time.then_some(at.as_str()),
                timezone: Some(["UTC", "Europe/Berlin", "America/New_York"][op.arg as usize % 3]),
                expires_at: expires.as_deref(),
                max_runs: (op.arg % 5 == 1).then_some(2),
            },
            self.now,
        )
        .expect("the generator's timings are valid");
        let follows = (op.arg % 3 == 2)
            .then(|| pick(&self.schedules, op.pick).map(|(s, _)| s.clone()))
            .flatten();
        let event = NewSchedule {
            id: id.clone(),
            timing,
            missed_run_policy: [
                MissedRunPolicy::Skip,
                MissedRunPolicy::Catchup,
                MissedRunPolicy::Fail,
            ][op.pick as usize % 3],
            overlap_policy: [
                OverlapPolicy::Skip,
                OverlapPolicy::BufferOne,
                OverlapPolicy::AllowAll,
                OverlapPolicy::CancelOther,
            ][(op.arg / 3) as usize % 4],
            after_schedule_id: follows,
            target: TargetKind::Task,
            template: serde_json::json!({ "prompt": "nightly" }),
        }
        .created(self.now);
        self.schedule_events(journal, &id, vec![event], Vec::new());
    }

    /// The followed schedule's latest run that launched something, as the actor reads it.
    fn latest_run_of(&self, schedule_id: &str) -> Option<ExecutionRecord> {
        self.run_order
            .iter()
            .rev()
            .map(|id| &self.runs[id])
            .find(|r| {
                r.schedule_id == schedule_id
                    && !matches!(r.status, ExecutionStatus::Missed | ExecutionStatus::Skipped)
            })
            .cloned()
    }

    /// What the `ScheduleActor` would journal next: its decision now, or, when that is to
    /// wait, its decision once the clock has got there (sometimes jumping past the grace
    /// period).
    fn step_schedule(&mut self, op: Op, journal: &mut Journal) {
        let Some((id, _)) = pick(&self.schedules, op.pick) else {
            return;
        };
        let id = id.clone();
        for _ in 0..3 {
            let s = self.schedules[&id].clone();
            let followed = s
                .after_schedule_id
                .as_deref()
                .and_then(|f| self.latest_run_of(f));
            let decision = schedule::decide(
                &s,
                &DueContext {
                    now: self.now,
                    grace_ms: GRACE_MS,
                    followed: followed.as_ref(),
                },
            );
            match decision {
                Decision::Idle => return,
                Decision::WaitUntil(at) => {
                    let late = if op.arg.is_multiple_of(4) {
                        3 * GRACE_MS
                    } else {
                        0
                    };
                    self.now = self.now.max(at + late);
                }
                Decision::Record(events) => {
                    return self.schedule_events(journal, &id, events, Vec::new());
                }
                Decision::Fire(plan) => return self.fire(journal, &id, *plan),
            }
        }
    }

    fn fire(&mut self, journal: &mut Journal, id: &str, plan: schedule::FirePlan) {
        let execution_id = self.id("run");
        let launched = Launched {
            task_id: Some(self.id("task")),
            pipeline_id: None,
            loop_id: None,
        };
        let events = plan.events(self.now, &execution_id, launched);
        self.schedule_events(journal, id, events, Vec::new());
    }

    /// A run's task ended: the schedule's `ExecutionEnded` and the row's `Ended` in one
    /// append.
    fn end_run(&mut self, op: Op, journal: &mut Journal) {
        let running: Vec<(String, String)> = self
            .schedules
            .values()
            .flat_map(|s| s.running.iter().map(|r| (s.id.clone(), r.clone())))
            .collect();
        if running.is_empty() {
            return;
        }
        let (schedule_id, run_id) = running[op.pick as usize % running.len()].clone();
        let status = [
            ExecutionStatus::Completed,
            ExecutionStatus::Completed,
            ExecutionStatus::Failed,
            ExecutionStatus::Cancelled,
        ][op.arg as usize % 4];
        let at = self.now;
        self.schedule_events(
            journal,
            &schedule_id,
            vec![ScheduleEvent::ExecutionEnded {
                at,
                execution_id: run_id.clone(),
                status,
            }],
            vec![(
                run_id,
                ExecutionEvent::Ended {
                    at,
                    status,
                    reason: (status != ExecutionStatus::Completed)
                        .then(|| "exited with code 1".into()),
                },
            )],
        );
    }

    fn schedule_command(&mut self, op: Op, journal: &mut Journal) {
        let Some((id, s)) = pick(&self.schedules, op.pick) else {
            return;
        };
        let (id, s) = (id.clone(), s.clone());
        let now = self.now;
        let planned = match op.arg % 4 {
            0 => schedule::plan_pause(&s, now),
            1 => schedule::plan_resume(&s, now),
            2 => schedule::plan_cancel(&s, now, Some("no longer needed")),
            _ => match schedule::plan_manual_fire(&s, now) {
                Ok(plan) => return self.fire(journal, &id, plan),
                Err(_) => {
                    self.refused += 1;
                    return;
                }
            },
        };
        match planned {
            Ok(event) => self.schedule_events(journal, &id, vec![event], Vec::new()),
            Err(_) => self.refused += 1,
        }
    }

    /// An event out of turn: `apply` decides, and a refused one is never journaled.
    fn wild(&mut self, op: Op, journal: &mut Journal) {
        let at = self.now;
        if op.arg.is_multiple_of(2) {
            let Some((id, _)) = pick(&self.loops, op.pick) else {
                return;
            };
            let id = id.clone();
            let number = (op.arg / 2 % 4) as u32;
            let event = match op.arg / 8 % 5 {
                0 => LoopEvent::IterationStarted {
                    at,
                    number,
                    task_ids: vec![self.id("task")],
                },
                1 => LoopEvent::Settled {
                    at,
                    number,
                    commit_sha: None,
                    diff_summary: None,
                },
                2 => LoopEvent::EvalStarted {
                    at,
                    number,
                    eval_id: self.id("eval"),
                },
                3 => LoopEvent::Finished {
                    at,
                    status: LoopStatus::Completed,
                    reason: "out of turn".into(),
                },
                _ => LoopEvent::Created {
                    record: Box::new(LoopRecord {
                        id: id.clone(),
                        ..Default::default()
                    }),
                },
            };
            self.loop_event(journal, &id, event);
        } else {
            let Some((id, s)) = pick(&self.schedules, op.pick) else {
                return;
            };
            let (id, s) = (id.clone(), s.clone());
            let event = match op.arg / 2 % 4 {
                0 => ScheduleEvent::Resumed {
                    at,
                    next_run_at: s.next_run_at,
                },
                1 => ScheduleEvent::ExecutionEnded {
                    at,
                    execution_id: "run-unknown".into(),
                    status: ExecutionStatus::Completed,
                },
                2 => ScheduleEvent::Expired { at },
                _ => ScheduleEvent::Fired {
                    at,
                    scheduled_for: at,
                    execution_id: self.id("run"),
                    launched: Launched::default(),
                    next_run_at: s.next_run_at,
                    buffered: true,
                    manual: false,
                },
            };
            self.schedule_events(journal, &id, vec![event], Vec::new());
        }
    }
}

fn task_end(arg: u16) -> TaskEnd {
    let (kind, reason) = match arg % 6 {
        0..=2 => (TaskEndKind::Completed, "completed"),
        3 | 4 => (TaskEndKind::Failed, "exited with code 1"),
        _ => (TaskEndKind::Cancelled, "cancelled by the user"),
    };
    let rate_limited = kind == TaskEndKind::Failed && arg.is_multiple_of(5);
    TaskEnd {
        kind,
        reason: reason.into(),
        exit_code: (kind == TaskEndKind::Failed).then_some(1),
        usage: arg.is_multiple_of(2).then(|| Usage {
            input_tokens: 1_000 + arg as u64,
            output_tokens: 500,
            cost_usd: Some(0.01),
            ..Default::default()
        }),
        rate_limited,
        rate_limit_reset: rate_limited.then_some(T0 + 3_600_000),
    }
}

fn report(l: &LoopRecord, arg: u16) -> EvalReport {
    let verdict = match (l.strategy, arg % 4) {
        (Strategy::Retry, 0) => Verdict::Pass,
        (Strategy::Retry, _) => Verdict::Fail,
        (Strategy::Optimize, 0) => Verdict::Crash,
        (Strategy::Optimize, _) => Verdict::Score((arg % 97) as f64 / 7.0),
    };
    EvalReport {
        verdict,
        exit_code: Some((arg % 2) as i32),
        last_line: Some(format!("{} points", arg % 97)),
        output_tail: Some("tests: ok".into()),
        message: None,
        usage: None,
    }
}

fn loop_name(e: &LoopEvent) -> String {
    match e {
        LoopEvent::Finished { status, .. } => format!("loop finished/{}", status.as_str()),
        e => format!("loop {}", e.name()),
    }
}

// ---------------------------------------------------------------------------------
// The check
// ---------------------------------------------------------------------------------

fn check_fold(path: &Path, world: &World) {
    let store = Store::new(path);
    let mut folded = BTreeMap::<String, Record>::new();
    let mut iterations = BTreeMap::<(String, u32), IterationRecord>::new();
    for stored in store.events().expect("reading events") {
        let next =
            Record::apply(folded.get(&stored.entity_id), &stored.event).unwrap_or_else(|e| {
                panic!(
                    "journaled event seq {} ({:?}) does not fold: {e}",
                    stored.seq, stored.event
                )
            });
        assert_eq!(next.id(), stored.entity_id, "event seq {}", stored.seq);
        if let (Event::Loop(_), Record::Loop(l)) = (&stored.event, &next)
            && let Some(it) = &l.latest
        {
            iterations.insert((l.id.clone(), it.iteration_number), it.clone());
        }
        folded.insert(stored.entity_id.clone(), next);
    }
    let mut loops_fold = BTreeMap::new();
    let mut schedules_fold = BTreeMap::new();
    let mut runs_fold = BTreeMap::new();
    for (id, record) in folded {
        match record {
            Record::Loop(l) => loops_fold.insert(id, l),
            Record::Schedule(s) => schedules_fold.insert(id, s).map(|_| unreachable!()),
            Record::ScheduleRun(r) => runs_fold.insert(id, r).map(|_| unreachable!()),
            Record::Task(_) | Record::Pipeline(_) => unreachable!("this generator makes none"),
        };
    }

    let loops_table = BTreeMap::from_iter(
        store
            .all::<LoopRecord>()
            .expect("loops")
            .into_iter()
            .map(|l| (l.id.clone(), l)),
    );
    assert_eq!(loops_fold, loops_table, "loops: table differs from fold");
    assert_eq!(loops_fold, world.loops, "loops: fold differs from model");

    let mut iterations_table = BTreeMap::new();
    for id in loops_table.keys() {
        for it in store.loop_iterations(id).expect("loop_iterations") {
            iterations_table.insert((id.clone(), it.iteration_number), it);
        }
    }
    assert_eq!(
        iterations, iterations_table,
        "loop_iterations: table differs from fold"
    );

    let schedules_table = BTreeMap::from_iter(
        store
            .all::<ScheduleRecord>()
            .expect("schedules")
            .into_iter()
            .map(|s| (s.id.clone(), s)),
    );
    assert_eq!(
        schedules_fold, schedules_table,
        "schedules: table differs from fold"
    );
    assert_eq!(
        schedules_fold, world.schedules,
        "schedules: fold differs from model"
    );

    let runs_table = BTreeMap::from_iter(
        store
            .all::<ExecutionRecord>()
            .expect("schedule_runs")
            .into_iter()
            .map(|r| (r.id.clone(), r)),
    );
    assert_eq!(
        runs_fold, runs_table,
        "schedule_runs: table differs from fold"
    );
    assert_eq!(
        runs_fold, world.runs,
        "schedule_runs: fold differs from model"
    );
}

#[derive(Debug, Default)]
struct Totals {
    journaled: BTreeSet<String>,
    refused: usize,
    restarts: usize,
    mixed_appends: usize,
}

fn run_case(ops: &[Op], totals: &mut Totals) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("beat.db");
    let mut journal = Journal::open(&path);
    let mut world = World {
        now: T0,
        ..Default::default()
    };
    for op in ops {
        world.apply_op(*op, &mut journal);
        if op.settle {
            journal.settle();
        }
    }
    journal.settle();
    check_fold(&path, &world);
    totals.journaled.extend(world.journaled.iter().cloned());
    totals.refused += world.refused;
    totals.restarts += world.restarts;
    totals.mixed_appends += world.mixed_appends;
}

#[test]
fn loop_schedule_and_execution_tables_are_the_fold_of_the_events() {
    let began = Instant::now();
    let totals = std::cell::RefCell::new(Totals::default());
    let config = Config {
        cases: 32,
        // Regressions are reported in the failure message, not written beside the test.
        failure_persistence: None,
        ..Config::default()
    };
    // A fixed seed: the coverage checks below (every event journaled at least once)
    // must not depend on the luck of a run. The seed's cases were checked to reach
    // every event; a generator change that stops reaching one fails here every time.
    let rng = TestRng::deterministic_rng(config.rng_algorithm);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let result = runner.run(&ops(), |ops| {
        run_case(&ops, &mut totals.borrow_mut());
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    let totals = totals.into_inner();
    eprintln!("{totals:#?} in {:?}", began.elapsed());
    assert!(totals.refused > 0, "no invalid event was tried: {totals:?}");
    assert!(totals.restarts > 0, "no restart was tried: {totals:?}");
    assert!(
        totals.mixed_appends > 0,
        "no append carried two kinds: {totals:?}"
    );
    // Every event of every kind, and each way a loop ends by its rules.
    let loop_events = [
        "created",
        "iteration_started",
        "rate_limited",
        "task_ended",
        "eval_started",
        "evaluated",
        "settled",
        "paused",
        "resumed",
        "cancelled",
        "finished/completed",
        "finished/failed",
    ];
    let schedule_events = [
        "created",
        "fired",
        "refused",
        "skipped",
        "buffered",
        "missed",
        "execution_ended",
        "paused",
        "resumed",
        "cancelled",
        "completed",
        "expired",
    ];
    let execution_events = ["recorded", "ended"];
    let wanted = loop_events
        .iter()
        .map(|n| format!("loop {n}"))
        .chain(schedule_events.iter().map(|n| format!("schedule {n}")))
        .chain(execution_events.iter().map(|n| format!("run {n}")));
    let missing: Vec<_> = wanted.filter(|n| !totals.journaled.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "never journaled: {missing:?} (journaled: {:?})",
        totals.journaled
    );
}
