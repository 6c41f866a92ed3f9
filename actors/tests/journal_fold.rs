//! The journal's central invariant: every state table (`tasks`, `pipelines`) always
//! equals the fold of the `events` table, for every kind and every event.
//!
//! Every transition is journaled as an event beside the record it produced, in one
//! transaction; recovery, audits and replays all trust that folding the events in `seq`
//! order with the pure state machine (`model::task::apply`) gives back exactly the
//! stored records. Nothing else checks that promise end to end, so this test drives the
//! real `JournalWriter` (group commit on its thread, a real SQLite file in a tempdir)
//! with thousands of random operations and then compares three things that must agree:
//! the fold of `Store::events()`, the rows of `Store::tasks()`, and the test's own model.
//!
//! The random operations are what the engine does to tasks and pipelines: submits (some of them
//! retries carrying `parentTaskId`/`retryCount`/`retryOf` of an earlier task), starts,
//! exits turned into outcomes by `outcome_of_exit` (code 0, non-zero, signals, kills for
//! timeout, idle or cancel, spawn errors), cancels (of a queued task directly; of a
//! running one as `CancelRequested` and later a `Finished` killed for the cancel), lost
//! shims, start failures, requeues, rate limits (queued again until a time), checkpoints
//! committed with the terminal transition in one append, dependencies that unblock or
//! fail, pipelines created in one append with their steps, ended by their steps or
//! cancelled together with every unfinished step in one append (two kinds in one
//! transaction), and daemon restarts (the writer dropped, possibly with appends still
//! queued, and the same file reopened). Each operation is first put
//! to `apply`, and to an independent table of the allowed transitions: the two must
//! agree, refused events (some deliberately absurd, such as starting a completed task)
//! are never journaled, and accepted ones are appended, sometimes several at once so
//! that group commit puts them into one transaction.
//!
//! Prunes (`journal::prune`, as the daemon's retention and `beat prune` run it) come
//! between the operations: each must remove exactly what an independent rule says may
//! go (finished, old enough, needed by nothing unfinished), its events with it, so that
//! the fold of the remaining events still equals the tables; and no sequence number is
//! ever handed out twice, though a prune may remove the newest events.
//!
//! A second test appends from several threads at once and checks that every append
//! commits and the fold still equals the table.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use backbeat_actors::agents::run_dir::{ExitRecord, KillCause};
use backbeat_actors::journal::{Append, Store, TaskQuery, TaskSummary, prune};
use backbeat_actors::model::task::Checkpoint;
use backbeat_actors::model::{
    EntityKind, EntityRef, Event, ExitOutcome, PipelineEvent, PipelineRecord, PipelineStatus,
    Priority, Record, TaskEvent, TaskRecord, TaskStatus, Transition, apply, outcome_of_exit,
};
#[path = "support/journal.rs"]
mod journal_support;

use journal_support::{Journal, start_writer};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestRng, TestRunner};

type Records = BTreeMap<String, TaskRecord>;
type Pipelines = BTreeMap<String, PipelineRecord>;

// ---------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------

/// Which task an operation is about: usually one whose state suits the operation,
/// sometimes any task at all (which mostly makes invalid events that must be refused).
#[derive(Debug, Clone)]
struct Target {
    pick: Index,
    anywhere: bool,
}

#[derive(Debug, Clone)]
struct SubmitSpec {
    prompt: String,
    priority: Priority,
    agent: String,
    working_directory: String,
    timeout: u64,
    idle_timeout: Option<u64>,
    max_output_buffer: u64,
    created_at: i64,
    not_before: Option<i64>,
    blocked: bool,
    /// A retry of an earlier task (its lineage fields and settings are inherited).
    retry_of: Option<Index>,
}

#[derive(Debug, Clone)]
enum Op {
    Submit(Box<SubmitSpec>),
    Start {
        target: Target,
        at: i64,
        pid: u32,
        start_time: u64,
    },
    Exit {
        target: Target,
        at: i64,
        exit: Box<ExitRecord>,
        /// Commit the checkpoint with the terminal transition (as the engine does).
        checkpoint: bool,
    },
    /// `Cancelled` of a queued or blocked task, `CancelRequested` of a running one.
    Cancel {
        target: Target,
        at: i64,
        reason: String,
    },
    Lose {
        target: Target,
        at: i64,
        reason: String,
    },
    FailStart {
        target: Target,
        at: i64,
        reason: String,
    },
    /// What a running agent is doing (its retries), as the task's reason.
    Progress {
        target: Target,
        reason: String,
    },
    Requeue {
        target: Target,
        reason: String,
    },
    /// A run that ended on a rate limit: queued again until `not_before`.
    RateLimit {
        target: Target,
        at: i64,
        not_before: i64,
        exit: Box<ExitRecord>,
    },
    /// A blocked task whose dependencies all completed.
    Unblock {
        target: Target,
        at: i64,
        prompt: Option<String>,
        not_before: Option<i64>,
    },
    /// A blocked or queued task whose dependency failed.
    DependencyFail {
        target: Target,
        dependency: Index,
        at: i64,
        reason: String,
    },
    /// A terminal task's checkpoint (alone; `Exit` also commits one with its terminal
    /// transition, in one append).
    Checkpoint {
        target: Target,
        checkpoint: Box<Checkpoint>,
    },
    /// A pipeline of `steps` new tasks, all in one append.
    CreatePipeline {
        steps: usize,
        at: i64,
    },
    /// A running pipeline's steps decided its end.
    EndPipeline {
        pick: Index,
        how: u8,
        at: i64,
        reason: String,
    },
    /// A pipeline cancelled with every unfinished step, in one append.
    CancelPipeline {
        pick: Index,
        at: i64,
        reason: String,
    },
    /// An event of kind `kind` (see `Model::wild`) on any task, or on none: most of these
    /// must be refused.
    Wild {
        pick: Index,
        kind: u8,
        at: i64,
    },
    /// Drop the writer (perhaps with appends still queued) and reopen the same file.
    Restart,
    /// Remove every finished entity that ended at or before `cutoff` and that nothing
    /// unfinished needs (`journal::prune`), with its events.
    Prune {
        cutoff: i64,
    },
}

#[derive(Debug, Clone)]
struct Step {
    op: Op,
    /// Wait for every outstanding append after this one; otherwise leave them queued.
    settle: bool,
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9 ]{0,16}",
        1 => any::<String>(),
    ]
}

fn target() -> impl Strategy<Value = Target> {
    (any::<Index>(), prop::bool::weighted(0.1))
        .prop_map(|(pick, anywhere)| Target { pick, anywhere })
}

fn priority() -> impl Strategy<Value = Priority> {
    prop_oneof![Just(Priority::P0), Just(Priority::P1), Just(Priority::P2)]
}

fn submit_spec() -> impl Strategy<Value = SubmitSpec> {
    (
        (text(), priority(), "[a-z]{1,8}", text()),
        (
            any::<u64>(),
            any::<Option<u64>>(),
            any::<u64>(),
            any::<i64>(),
            any::<Option<i64>>(),
        ),
        (
            prop::bool::weighted(0.1),
            prop::option::weighted(0.3, any::<Index>()),
        ),
    )
        .prop_map(
            |(
                (prompt, priority, agent, working_directory),
                (timeout, idle_timeout, max_output_buffer, created_at, not_before),
                (blocked, retry_of),
            )| SubmitSpec {
                prompt,
                priority,
                agent,
                working_directory,
                timeout,
                idle_timeout,
                max_output_buffer,
                created_at,
                not_before,
                blocked,
                retry_of,
            },
        )
}

type HowItEnded = (Option<i32>, Option<i32>, Option<KillCause>, Option<String>);

fn exit_record() -> impl Strategy<Value = ExitRecord> {
    let how: BoxedStrategy<HowItEnded> = prop_oneof![
        3 => Just((Some(0), None, None, None)),
        2 => (1..=255i32).prop_map(|c| (Some(c), None, None, None)),
        1 => any::<i32>().prop_map(|c| (Some(c), None, None, None)),
        2 => (1..=64i32).prop_map(|s| (None, Some(s), None, None)),
        1 => (any::<u64>(), prop_oneof![Just(9), Just(15)])
            .prop_map(|(after_ms, s)| (None, Some(s), Some(KillCause::Timeout { after_ms }), None)),
        1 => (any::<u64>(), prop_oneof![Just(9), Just(15)])
            .prop_map(|(after_ms, s)| (None, Some(s), Some(KillCause::Idle { after_ms }), None)),
        1 => Just((None, Some(15), Some(KillCause::Cancel), None)),
        1 => text().prop_map(|e| (None, None, None, Some(e))),
        1 => Just((None, None, None, None)),
    ]
    .boxed();
    (
        how,
        any::<i64>(),
        any::<i64>(),
        any::<u64>(),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(
            |(
                (exit_code, signal, killed_for, spawn_error),
                started_at,
                ended_at,
                max_rss_kb,
                output_bytes,
                truncated,
            )| ExitRecord {
                exit_code,
                signal,
                killed_for,
                started_at,
                ended_at,
                max_rss_kb,
                output_bytes,
                truncated,
                spawn_error,
                summary: None,
            },
        )
}

fn checkpoint() -> impl Strategy<Value = Checkpoint> {
    (
        prop_oneof![
            Just(TaskStatus::Completed),
            Just(TaskStatus::Failed),
            Just(TaskStatus::Cancelled)
        ],
        text(),
        prop::option::of(text()),
        prop::option::of("[a-z/]{1,12}"),
        prop::collection::vec(text(), 0..3),
        any::<i64>(),
    )
        .prop_map(
            |(
                checkpoint_type,
                output_summary,
                error_summary,
                git_branch,
                git_dirty_files,
                created_at,
            )| {
                Checkpoint {
                    checkpoint_type,
                    output_summary,
                    error_summary,
                    git_commit_sha: git_branch.as_ref().map(|b| format!("sha-{b}")),
                    git_branch,
                    git_dirty_files,
                    created_at,
                }
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => submit_spec().prop_map(|s| Op::Submit(Box::new(s))),
        5 => (target(), any::<i64>(), any::<u32>(), any::<u64>())
            .prop_map(|(target, at, pid, start_time)| Op::Start { target, at, pid, start_time }),
        5 => (target(), any::<i64>(), exit_record(), any::<bool>())
            .prop_map(|(target, at, exit, checkpoint)| Op::Exit { target, at, exit: Box::new(exit), checkpoint }),
        1 => (target(), any::<i64>(), any::<i64>(), exit_record())
            .prop_map(|(target, at, not_before, exit)| Op::RateLimit { target, at, not_before, exit: Box::new(exit) }),
        2 => (target(), any::<i64>(), prop::option::of(text()), any::<Option<i64>>())
            .prop_map(|(target, at, prompt, not_before)| Op::Unblock { target, at, prompt, not_before }),
        1 => (target(), any::<Index>(), any::<i64>(), text())
            .prop_map(|(target, dependency, at, reason)| Op::DependencyFail { target, dependency, at, reason }),
        1 => (target(), checkpoint())
            .prop_map(|(target, c)| Op::Checkpoint { target, checkpoint: Box::new(c) }),
        1 => (2..5usize, any::<i64>()).prop_map(|(steps, at)| Op::CreatePipeline { steps, at }),
        1 => (any::<Index>(), 0..3u8, any::<i64>(), text())
            .prop_map(|(pick, how, at, reason)| Op::EndPipeline { pick, how, at, reason }),
        1 => (any::<Index>(), any::<i64>(), text())
            .prop_map(|(pick, at, reason)| Op::CancelPipeline { pick, at, reason }),
        2 => (target(), any::<i64>(), text())
            .prop_map(|(target, at, reason)| Op::Cancel { target, at, reason }),
        1 => (target(), any::<i64>(), text())
            .prop_map(|(target, at, reason)| Op::Lose { target, at, reason }),
        1 => (target(), any::<i64>(), text())
            .prop_map(|(target, at, reason)| Op::FailStart { target, at, reason }),
        1 => (target(), text()).prop_map(|(target, reason)| Op::Requeue { target, reason }),
        2 => (target(), text()).prop_map(|(target, reason)| Op::Progress { target, reason }),
        2 => (any::<Index>(), 0..WILD_KINDS, any::<i64>())
            .prop_map(|(pick, kind, at)| Op::Wild { pick, kind, at }),
        1 => Just(Op::Restart),
        1 => prop_oneof![any::<i64>(), Just(i64::MAX)].prop_map(|cutoff| Op::Prune { cutoff }),
    ]
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        (op(), prop::bool::weighted(0.6)).prop_map(|(op, settle)| Step { op, settle }),
        40..120,
    )
}

// ---------------------------------------------------------------------------------
// The allowed transitions, written out independently of `apply`
// ---------------------------------------------------------------------------------

/// The status `event` leads to from `prev`, or `None` when it must be refused.
fn allowed(prev: Option<&TaskRecord>, event: &TaskEvent) -> Option<TaskStatus> {
    use TaskStatus::*;
    match (prev.map(|p| p.status), event) {
        (None, TaskEvent::Submitted { task }) if matches!(task.status, Queued | Blocked) => {
            Some(task.status)
        }
        (Some(Queued), TaskEvent::Started { .. }) => Some(Running),
        (Some(Running), TaskEvent::CancelRequested { .. }) => Some(Running),
        (Some(Running), TaskEvent::Finished { outcome, .. }) if outcome.status.is_terminal() => {
            Some(outcome.status)
        }
        (Some(Running), TaskEvent::Lost { .. }) => Some(Failed),
        (Some(Running), TaskEvent::Requeued { .. }) => Some(Queued),
        (Some(Running), TaskEvent::Progress { .. }) => Some(Running),
        (Some(Queued | Blocked), TaskEvent::Cancelled { .. }) => Some(Cancelled),
        (Some(Queued), TaskEvent::StartFailed { .. }) => Some(Failed),
        (Some(Running), TaskEvent::RateLimited { .. }) => Some(Queued),
        (Some(Blocked), TaskEvent::Unblocked { .. }) => Some(Queued),
        (Some(Blocked | Queued), TaskEvent::DependencyFailed { .. }) => Some(Cancelled),
        (Some(s @ (Completed | Failed | Cancelled)), TaskEvent::Checkpointed { .. }) => Some(s),
        _ => None,
    }
}

/// The pipeline status `event` leads to from `prev`, or `None` when it must be refused.
fn allowed_pipeline(
    prev: Option<&PipelineRecord>,
    event: &PipelineEvent,
) -> Option<PipelineStatus> {
    use PipelineStatus::*;
    match (prev.map(|p| p.status), event) {
        (None, PipelineEvent::Created { pipeline })
            if pipeline.status == Running && (2..=20).contains(&pipeline.steps.len()) =>
        {
            Some(Running)
        }
        (Some(Running), PipelineEvent::Completed { .. }) => Some(Completed),
        (Some(Running), PipelineEvent::Failed { .. }) => Some(Failed),
        (Some(Running), PipelineEvent::Cancelled { .. }) => Some(Cancelled),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------
// The test's model of the tasks
// ---------------------------------------------------------------------------------

#[derive(Default, Clone)]
struct Model {
    records: Records,
    /// Ids in submission order, so that an `Index` picks a task deterministically.
    order: Vec<String>,
    pipelines: Pipelines,
    pipeline_order: Vec<String>,
    next_id: usize,
}

const GHOST: &str = "task-that-was-never-submitted";
const GHOST_PIPELINE: &str = "pipeline-that-was-never-created";
const WILD_KINDS: u8 = 16;

/// What an operation journals: one event, or several committed in one append.
type Events = Vec<(String, Event)>;

fn task_event(id: String, event: TaskEvent) -> Events {
    vec![(id, Event::Task(event))]
}

impl Model {
    /// What a prune at `cutoff` must remove, by the rule written out independently of
    /// the SQL: finished standalone tasks and finished pipelines (with their steps,
    /// all finished) that ended at or before `cutoff` and that no unfinished task
    /// depends on. Each as the entity chosen and every entity removed with it.
    fn prunable(&self, cutoff: i64) -> BTreeMap<String, BTreeSet<String>> {
        let needed: BTreeSet<&String> = self
            .records
            .values()
            .filter(|t| !t.status.is_terminal())
            .flat_map(|t| t.depends_on.iter())
            .collect();
        let mut out = BTreeMap::new();
        for t in self.records.values() {
            if t.status.is_terminal()
                && t.owner.is_none()
                && t.completed_at.unwrap_or(t.created_at) <= cutoff
                && !needed.contains(&t.id)
            {
                out.insert(t.id.clone(), BTreeSet::from([t.id.clone()]));
            }
        }
        for p in self.pipelines.values() {
            let steps: Vec<&TaskRecord> = self
                .records
                .values()
                .filter(|t| t.pipeline_id.as_deref() == Some(p.id.as_str()))
                .collect();
            if p.status.is_terminal()
                && p.completed_at.unwrap_or(p.created_at) <= cutoff
                && steps.iter().all(|t| t.status.is_terminal())
                && !steps.iter().any(|t| needed.contains(&t.id))
            {
                let mut members = BTreeSet::from([p.id.clone()]);
                members.extend(steps.iter().map(|t| t.id.clone()));
                out.insert(p.id.clone(), members);
            }
        }
        out
    }

    /// Forgets a pruned entity.
    fn forget(&mut self, id: &str) {
        self.records.remove(id);
        self.order.retain(|o| o != id);
        self.pipelines.remove(id);
        self.pipeline_order.retain(|o| o != id);
    }

    fn get(&self, id: &str) -> Option<Record> {
        self.records
            .get(id)
            .cloned()
            .map(Record::Task)
            .or_else(|| self.pipelines.get(id).cloned().map(Record::Pipeline))
    }

    fn accept_record(&mut self, record: Record) {
        match record {
            Record::Task(t) => self.accept(t),
            Record::Pipeline(p) => {
                if !self.pipelines.contains_key(&p.id) {
                    self.pipeline_order.push(p.id.clone());
                }
                self.pipelines.insert(p.id.clone(), p);
            }
            Record::Loop(_) => unreachable!("the generator makes no loops"),
            Record::Schedule(_) | Record::ScheduleRun(_) => unreachable!("no schedules here"),
        }
    }

    /// A running pipeline if there is one (unless `anywhere`), else any, else none.
    fn pick_pipeline(&self, pick: &Index, anywhere: bool) -> String {
        let running: Vec<&String> = self
            .pipeline_order
            .iter()
            .filter(|id| self.pipelines[*id].status == PipelineStatus::Running)
            .collect();
        if !anywhere && !running.is_empty() {
            return pick.get(&running).to_string();
        }
        if self.pipeline_order.is_empty() {
            return GHOST_PIPELINE.to_string();
        }
        pick.get(&self.pipeline_order).clone()
    }

    fn create_pipeline(&mut self, steps: usize, at: i64) -> Events {
        self.next_id += 1;
        let pipeline_id = format!("pipeline-{}", self.next_id);
        let mut events = Vec::new();
        let mut ids = Vec::new();
        for step in 0..steps {
            let id = self.fresh_id();
            let task = TaskRecord {
                id: id.clone(),
                prompt: format!("step {step}"),
                status: if step == 0 {
                    TaskStatus::Queued
                } else {
                    TaskStatus::Blocked
                },
                agent: "shell".into(),
                working_directory: "/".into(),
                timeout: 1000,
                max_output_buffer: 1024,
                created_at: at,
                depends_on: ids.last().cloned().into_iter().collect(),
                pipeline_id: Some(pipeline_id.clone()),
                pipeline_step: Some(step as u32 + 1),
                start_delay: (step % 2 == 1).then_some(250),
                owner: Some(EntityRef::new(EntityKind::Pipeline, pipeline_id.clone())),
                ..Default::default()
            };
            ids.push(id.clone());
            events.push((
                id,
                Event::Task(TaskEvent::Submitted {
                    task: Box::new(task),
                }),
            ));
        }
        let pipeline = PipelineRecord {
            id: pipeline_id.clone(),
            status: PipelineStatus::Running,
            steps: ids,
            created_at: at,
            completed_at: None,
            reason: None,
        };
        events.push((
            pipeline_id,
            Event::Pipeline(PipelineEvent::Created {
                pipeline: Box::new(pipeline),
            }),
        ));
        events
    }

    /// As CancelPipeline: the pipeline and its unfinished steps, in one append.
    fn cancel_pipeline(&self, pick: &Index, at: i64, reason: &str) -> Events {
        let id = self.pick_pipeline(pick, false);
        let mut events = vec![(
            id.clone(),
            Event::Pipeline(PipelineEvent::Cancelled {
                at,
                reason: reason.to_string(),
            }),
        )];
        let Some(p) = self.pipelines.get(&id) else {
            return events;
        };
        for step in &p.steps {
            let t = &self.records[step];
            let event = match t.status {
                TaskStatus::Queued | TaskStatus::Blocked => TaskEvent::Cancelled {
                    at,
                    reason: reason.to_string(),
                },
                TaskStatus::Running if t.cancel_reason.is_none() => TaskEvent::CancelRequested {
                    reason: reason.to_string(),
                },
                _ => continue,
            };
            events.push((step.clone(), Event::Task(event)));
        }
        events
    }

    fn fresh_id(&mut self) -> String {
        self.next_id += 1;
        format!("task-{}", self.next_id)
    }

    /// The id of a task in one of `suits` (any task if none is, or if `anywhere`).
    fn target(&self, target: &Target, suits: &[TaskStatus]) -> String {
        let suitable: Vec<&String> = self
            .order
            .iter()
            .filter(|id| suits.contains(&self.records[*id].status))
            .collect();
        if !target.anywhere && !suitable.is_empty() {
            return target.pick.get(&suitable).to_string();
        }
        if self.order.is_empty() {
            return GHOST.to_string();
        }
        target.pick.get(&self.order).clone()
    }

    fn submitted(&mut self, spec: &SubmitSpec) -> (String, TaskEvent) {
        let id = self.fresh_id();
        let mut task = TaskRecord {
            id: id.clone(),
            prompt: spec.prompt.clone(),
            status: if spec.blocked {
                TaskStatus::Blocked
            } else {
                TaskStatus::Queued
            },
            priority: spec.priority,
            agent: spec.agent.clone(),
            working_directory: spec.working_directory.clone(),
            timeout: spec.timeout,
            idle_timeout: spec.idle_timeout,
            max_output_buffer: spec.max_output_buffer,
            parent_task_id: None,
            retry_count: None,
            retry_of: None,
            created_at: spec.created_at,
            started_at: None,
            completed_at: None,
            not_before: spec.not_before,
            exit_code: None,
            signal: None,
            reason: None,
            shim_pid: None,
            shim_start_time: None,
            cancel_reason: None,
            output_bytes: None,
            output_truncated: false,
            ..Default::default()
        };
        if let Some(pick) = &spec.retry_of
            && !self.order.is_empty()
        {
            // As the engine's Retry does: the settings of the earlier task, and the
            // lineage pointing at it and at the root of its chain.
            let ended: Vec<&String> = self
                .order
                .iter()
                .filter(|id| self.records[*id].status.is_terminal())
                .collect();
            let parent = if ended.is_empty() {
                &self.records[pick.get(&self.order)]
            } else {
                &self.records[*pick.get(&ended)]
            };
            task.prompt = parent.prompt.clone();
            task.priority = parent.priority;
            task.agent = parent.agent.clone();
            task.working_directory = parent.working_directory.clone();
            task.timeout = parent.timeout;
            task.idle_timeout = parent.idle_timeout;
            task.max_output_buffer = parent.max_output_buffer;
            task.parent_task_id = Some(
                parent
                    .parent_task_id
                    .clone()
                    .unwrap_or_else(|| parent.id.clone()),
            );
            task.retry_count = Some(parent.retry_count.unwrap_or(0) + 1);
            task.retry_of = Some(parent.id.clone());
        }
        (
            id,
            TaskEvent::Submitted {
                task: Box::new(task),
            },
        )
    }

    /// The events an operation makes, given the current state.
    fn events_for(&mut self, op: &Op) -> Events {
        use TaskStatus::*;
        match op {
            Op::Exit {
                target,
                at,
                exit,
                checkpoint: true,
            } => {
                let (id, finished) = self.event_for(&Op::Exit {
                    target: target.clone(),
                    at: *at,
                    exit: exit.clone(),
                    checkpoint: false,
                });
                let TaskEvent::Finished { outcome, .. } = &finished else {
                    unreachable!()
                };
                let checkpoint = Checkpoint {
                    checkpoint_type: outcome.status,
                    output_summary: "last lines".into(),
                    error_summary: Some(outcome.reason.clone()),
                    created_at: *at,
                    ..Default::default()
                };
                vec![
                    (id.clone(), Event::Task(finished)),
                    (
                        id,
                        Event::Task(TaskEvent::Checkpointed {
                            checkpoint: Box::new(checkpoint),
                        }),
                    ),
                ]
            }
            Op::RateLimit {
                target,
                at,
                not_before,
                exit,
            } => {
                let id = self.target(target, &[Running]);
                let cancel_reason = self.records.get(&id).and_then(|t| t.cancel_reason.clone());
                let mut outcome = outcome_of_exit(exit, cancel_reason.as_deref());
                outcome.rate_limited = true;
                task_event(
                    id,
                    TaskEvent::RateLimited {
                        at: *at,
                        not_before: *not_before,
                        outcome,
                    },
                )
            }
            Op::Unblock {
                target,
                at,
                prompt,
                not_before,
            } => task_event(
                self.target(target, &[Blocked]),
                TaskEvent::Unblocked {
                    at: *at,
                    prompt: prompt.clone(),
                    not_before: *not_before,
                },
            ),
            Op::DependencyFail {
                target,
                dependency,
                at,
                reason,
            } => {
                let id = self.target(target, &[Blocked, Queued]);
                let dependency = if self.order.is_empty() {
                    GHOST.to_string()
                } else {
                    dependency.get(&self.order).clone()
                };
                task_event(
                    id,
                    TaskEvent::DependencyFailed {
                        at: *at,
                        root: dependency.clone(),
                        dependency,
                        reason: reason.clone(),
                    },
                )
            }
            Op::Checkpoint { target, checkpoint } => task_event(
                self.target(target, &[Completed, Failed, Cancelled]),
                TaskEvent::Checkpointed {
                    checkpoint: checkpoint.clone(),
                },
            ),
            Op::CreatePipeline { steps, at } => self.create_pipeline(*steps, *at),
            Op::EndPipeline {
                pick,
                how,
                at,
                reason,
            } => {
                let id = self.pick_pipeline(pick, false);
                let event = match how {
                    0 => PipelineEvent::Completed { at: *at },
                    1 => PipelineEvent::Failed {
                        at: *at,
                        step: self
                            .pipelines
                            .get(&id)
                            .map(|p| p.steps[0].clone())
                            .unwrap_or_default(),
                        reason: reason.clone(),
                    },
                    _ => PipelineEvent::Cancelled {
                        at: *at,
                        reason: reason.clone(),
                    },
                };
                vec![(id, Event::Pipeline(event))]
            }
            Op::CancelPipeline { pick, at, reason } => self.cancel_pipeline(pick, *at, reason),
            Op::Wild { pick, kind, at } if *kind >= 12 => self.wild_pipeline(*pick, *kind, *at),
            other => {
                let (id, event) = self.event_for(other);
                task_event(id, event)
            }
        }
    }

    /// Pipeline events chosen without regard to state: most must be refused.
    fn wild_pipeline(&mut self, pick: Index, kind: u8, at: i64) -> Events {
        let id = self.pick_pipeline(&pick, true);
        let event = match kind {
            // Created twice.
            12 => match self.pipelines.get(&id) {
                Some(p) => PipelineEvent::Created {
                    pipeline: Box::new(PipelineRecord {
                        status: PipelineStatus::Running,
                        ..p.clone()
                    }),
                },
                None => PipelineEvent::Completed { at },
            },
            // A new pipeline of one step, or one that claims to have ended already.
            13 => {
                self.next_id += 1;
                let fresh = format!("pipeline-{}", self.next_id);
                let (status, steps) = if at % 2 == 0 {
                    (PipelineStatus::Running, vec![GHOST.to_string()])
                } else {
                    (
                        PipelineStatus::Completed,
                        vec![GHOST.to_string(), GHOST.to_string()],
                    )
                };
                let pipeline = PipelineRecord {
                    id: fresh.clone(),
                    status,
                    steps,
                    created_at: at,
                    ..Default::default()
                };
                return vec![(
                    fresh,
                    Event::Pipeline(PipelineEvent::Created {
                        pipeline: Box::new(pipeline),
                    }),
                )];
            }
            14 => PipelineEvent::Cancelled {
                at,
                reason: "wild".into(),
            },
            _ => PipelineEvent::Completed { at },
        };
        vec![(id, Event::Pipeline(event))]
    }

    /// The task and event an operation makes, given the current state.
    fn event_for(&mut self, op: &Op) -> (String, TaskEvent) {
        use TaskStatus::*;
        match op {
            Op::Submit(spec) => self.submitted(spec),
            Op::Start {
                target,
                at,
                pid,
                start_time,
            } => (
                self.target(target, &[Queued]),
                TaskEvent::Started {
                    at: *at,
                    shim_pid: *pid,
                    shim_start_time: *start_time,
                },
            ),
            Op::Exit {
                target, at, exit, ..
            } => {
                let id = self.target(target, &[Running]);
                let mut exit = (**exit).clone();
                let cancel_reason = self.records.get(&id).and_then(|t| t.cancel_reason.clone());
                if cancel_reason.is_some() {
                    // A cancel was asked for: the shim stops the agent for it.
                    exit.exit_code = None;
                    exit.signal = Some(15);
                    exit.killed_for = Some(KillCause::Cancel);
                    exit.spawn_error = None;
                }
                let outcome = outcome_of_exit(&exit, cancel_reason.as_deref());
                (id, TaskEvent::Finished { at: *at, outcome })
            }
            Op::Cancel { target, at, reason } => {
                let id = self.target(target, &[Queued, Blocked, Running]);
                let running = self.records.get(&id).map(|t| t.status) == Some(Running);
                let event = if running {
                    TaskEvent::CancelRequested {
                        reason: reason.clone(),
                    }
                } else {
                    TaskEvent::Cancelled {
                        at: *at,
                        reason: reason.clone(),
                    }
                };
                (id, event)
            }
            Op::Lose { target, at, reason } => (
                self.target(target, &[Running]),
                TaskEvent::Lost {
                    at: *at,
                    reason: reason.clone(),
                },
            ),
            Op::FailStart { target, at, reason } => (
                self.target(target, &[Queued]),
                TaskEvent::StartFailed {
                    at: *at,
                    reason: reason.clone(),
                },
            ),
            Op::Requeue { target, reason } => (
                self.target(target, &[Running]),
                TaskEvent::Requeued {
                    reason: reason.clone(),
                },
            ),
            Op::Progress { target, reason } => (
                self.target(target, &[Running]),
                TaskEvent::Progress {
                    reason: reason.clone(),
                },
            ),
            Op::Wild { pick, kind, at } => self.wild(*pick, *kind, *at),
            _ => unreachable!("{op:?} is handled by events_for"),
        }
    }

    /// Events chosen without regard to the task's state: most must be refused.
    fn wild(&mut self, pick: Index, kind: u8, at: i64) -> (String, TaskEvent) {
        let any = Target {
            pick,
            anywhere: true,
        };
        let id = self.target(&any, &[]);
        let outcome = |status| ExitOutcome {
            status,
            exit_code: Some(0),
            signal: None,
            reason: "wild".into(),
            output_bytes: 1,
            output_truncated: false,
            ..Default::default()
        };
        let event = match kind {
            // The same task submitted twice.
            0 => match self.records.get(&id) {
                Some(t) => TaskEvent::Submitted {
                    task: Box::new(TaskRecord {
                        status: TaskStatus::Queued,
                        ..t.clone()
                    }),
                },
                None => TaskEvent::Started {
                    at,
                    shim_pid: 1,
                    shim_start_time: 1,
                },
            },
            // A new task that claims to have run already.
            1 => {
                let (fresh, event) = self.submitted(&SubmitSpec {
                    prompt: "wild".into(),
                    priority: Priority::P2,
                    agent: "shell".into(),
                    working_directory: "/".into(),
                    timeout: 1,
                    idle_timeout: None,
                    max_output_buffer: 1,
                    created_at: at,
                    not_before: None,
                    blocked: false,
                    retry_of: None,
                });
                let TaskEvent::Submitted { mut task } = event else {
                    unreachable!()
                };
                task.status = [
                    TaskStatus::Running,
                    TaskStatus::Completed,
                    TaskStatus::Failed,
                    TaskStatus::Cancelled,
                ][at.rem_euclid(4) as usize];
                return (fresh, TaskEvent::Submitted { task });
            }
            // An outcome that does not end the run.
            2 => TaskEvent::Finished {
                at,
                outcome: outcome(if at % 2 == 0 {
                    TaskStatus::Running
                } else {
                    TaskStatus::Queued
                }),
            },
            3 => TaskEvent::Started {
                at,
                shim_pid: 2,
                shim_start_time: 2,
            },
            4 => TaskEvent::Cancelled {
                at,
                reason: "wild".into(),
            },
            5 => TaskEvent::CancelRequested {
                reason: "wild".into(),
            },
            6 => TaskEvent::Lost {
                at,
                reason: "wild".into(),
            },
            7 => TaskEvent::Requeued {
                reason: "wild".into(),
            },
            8 => TaskEvent::StartFailed {
                at,
                reason: "wild".into(),
            },
            9 => TaskEvent::Finished {
                at,
                outcome: outcome(TaskStatus::Completed),
            },
            // Anything on a task that does not exist.
            _ => {
                return (
                    GHOST.to_string(),
                    TaskEvent::Started {
                        at,
                        shim_pid: 3,
                        shim_start_time: 3,
                    },
                );
            }
        };
        (id, event)
    }

    fn accept(&mut self, record: TaskRecord) {
        if !self.records.contains_key(&record.id) {
            self.order.push(record.id.clone());
        }
        self.records.insert(record.id.clone(), record);
    }
}

// ---------------------------------------------------------------------------------
// The journal under test
// ---------------------------------------------------------------------------------

/// Folds the journal's events and checks the result against every state table and
/// against `model`. Returns how many events the journal holds.
fn check_fold(path: &Path, model: &Model) -> usize {
    let store = Store::new(path);
    let events = store.events().expect("reading events");
    let mut folded = BTreeMap::<String, Record>::new();
    let mut last_seq = i64::MIN;
    for stored in &events {
        assert!(
            stored.seq > last_seq,
            "event seq {} follows seq {last_seq}: not strictly increasing",
            stored.seq
        );
        last_seq = stored.seq;
        assert_eq!(stored.kind, stored.event.kind(), "event seq {}", stored.seq);
        let next =
            Record::apply(folded.get(&stored.entity_id), &stored.event).unwrap_or_else(|e| {
                panic!(
                    "journaled event seq {} ({:?}) does not fold: {e}",
                    stored.seq, stored.event
                )
            });
        assert_eq!(
            next.id(),
            stored.entity_id,
            "event seq {} is filed under another entity",
            stored.seq
        );
        folded.insert(stored.entity_id.clone(), next);
    }
    let mut folded_tasks = Records::new();
    let mut folded_pipelines = Pipelines::new();
    for (id, record) in folded {
        match record {
            Record::Task(t) => folded_tasks.insert(id, t),
            Record::Pipeline(p) => folded_pipelines.insert(id, p).map(|_| unreachable!()),
            Record::Loop(_) => unreachable!("the generator makes no loops"),
            Record::Schedule(_) | Record::ScheduleRun(_) => unreachable!("no schedules here"),
        };
    }

    // Tasks: table == fold == model.
    let rows = store
        .tasks(&TaskQuery {
            status: None,
            limit: None,
        })
        .expect("reading tasks");
    // A list's summaries are the same rows, in the same order, cut to what they hold.
    let summaries = store
        .task_summaries(&TaskQuery::default(), 5)
        .expect("reading task summaries");
    let projected: Vec<TaskSummary> = rows.iter().map(|t| TaskSummary::of(t, 5)).collect();
    assert_eq!(summaries, projected, "task summaries differ from the tasks");
    let row_count = rows.len();
    let table: Records = rows.into_iter().map(|t| (t.id.clone(), t)).collect();
    assert_eq!(table.len(), row_count, "the tasks table repeats an id");
    assert_eq!(folded_tasks, table, "tasks: table differs from fold");
    assert_eq!(
        folded_tasks, model.records,
        "tasks: fold differs from model"
    );
    let all: Records = store
        .all::<TaskRecord>()
        .expect("reading all tasks")
        .into_iter()
        .map(|t| (t.id.clone(), t))
        .collect();
    assert_eq!(all, table, "Store::all and Store::tasks disagree");

    // Pipelines: table == fold == model.
    let rows = store.all::<PipelineRecord>().expect("reading pipelines");
    let row_count = rows.len();
    let table: Pipelines = rows.into_iter().map(|p| (p.id.clone(), p)).collect();
    assert_eq!(table.len(), row_count, "the pipelines table repeats an id");
    assert_eq!(
        folded_pipelines, table,
        "pipelines: table differs from fold"
    );
    assert_eq!(
        folded_pipelines, model.pipelines,
        "pipelines: fold differs from model"
    );

    // The other read paths agree with the tables.
    for (id, record) in &model.records {
        assert_eq!(
            store.task(id).expect("reading a task").as_ref(),
            Some(record)
        );
    }
    for (id, record) in &model.pipelines {
        assert_eq!(
            store.pipeline(id).expect("reading a pipeline").as_ref(),
            Some(record)
        );
        let steps: Vec<String> = store
            .pipeline_steps(id)
            .expect("reading a pipeline's steps")
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(steps, record.steps, "steps of {id}");
    }
    let live: BTreeSet<String> = store
        .live_tasks()
        .expect("reading live tasks")
        .into_iter()
        .map(|t| t.id)
        .collect();
    let expected_live: BTreeSet<String> = model
        .records
        .values()
        .filter(|t| !t.status.is_terminal())
        .map(|t| t.id.clone())
        .collect();
    assert_eq!(live, expected_live, "live_tasks");
    let live: BTreeSet<String> = store
        .live_pipelines()
        .expect("reading live pipelines")
        .into_iter()
        .map(|p| p.id)
        .collect();
    let expected_live: BTreeSet<String> = model
        .pipelines
        .values()
        .filter(|p| !p.status.is_terminal())
        .map(|p| p.id.clone())
        .collect();
    assert_eq!(live, expected_live, "live_pipelines");
    let mut starts = BTreeMap::<String, i64>::new();
    for stored in &events {
        if matches!(stored.event, Event::Task(TaskEvent::Started { .. })) {
            *starts.entry(stored.entity_id.clone()).or_default() += 1;
        }
    }
    let counted: BTreeMap<String, i64> = store
        .start_counts()
        .expect("reading start counts")
        .into_iter()
        .collect();
    assert_eq!(counted, starts, "start_counts");
    events.len()
}

// ---------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------

#[derive(Default, Debug)]
struct Totals {
    cases: usize,
    operations: usize,
    refused: usize,
    restarts: usize,
    prunes: usize,
    /// Entities that prunes removed (each with whatever went with it).
    pruned_entities: usize,
    most_pending: usize,
    /// Appends that carried transitions of two kinds.
    mixed_appends: usize,
    /// Appends that carried several transitions of one entity.
    multi_step_appends: usize,
    /// Journaled events by name (`finished` also by the status it led to; pipeline
    /// events as `pipeline/<name>`).
    journaled: BTreeMap<String, usize>,
}

/// Checks one event against `apply` and the independent table; the record it makes,
/// or `None` when both refuse it.
fn check_event(prev: Option<&Record>, id: &str, event: &Event) -> Option<Record> {
    let next = Record::apply(prev, event);
    let expected: Option<&'static str> = match (prev, event) {
        (None, Event::Task(e)) => allowed(None, e).map(|s| s.as_str()),
        (Some(Record::Task(t)), Event::Task(e)) => allowed(Some(t), e).map(|s| s.as_str()),
        (None, Event::Pipeline(e)) => allowed_pipeline(None, e).map(|s| s.as_str()),
        (Some(Record::Pipeline(p)), Event::Pipeline(e)) => {
            allowed_pipeline(Some(p), e).map(|s| s.as_str())
        }
        _ => None,
    };
    match (next, expected) {
        (Ok(next), Some(status)) => {
            let got = match &next {
                Record::Task(t) => t.status.as_str(),
                Record::Pipeline(p) => p.status.as_str(),
                Record::Loop(l) => l.status.as_str(),
                Record::Schedule(_) | Record::ScheduleRun(_) => unreachable!("no schedules here"),
            };
            assert_eq!(got, status, "{event:?} on {prev:?}");
            assert_eq!(next.id(), id, "{event:?} changed the entity's id");
            Some(next)
        }
        (Err(refusal), None) => {
            assert_eq!(refusal.event, event.name());
            None
        }
        (Ok(next), None) => {
            panic!("apply accepted {event:?} on {prev:?} (giving {next:?}); it must refuse")
        }
        (Err(refusal), Some(status)) => {
            panic!("apply refused {event:?} on {prev:?} ({refusal}); expected {status}")
        }
    }
}

fn run_case(steps: &[Step], totals: &RefCell<Totals>) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("beat.db");
    let mut journal = Journal::open(&path);
    let mut model = Model::default();
    let mut accepted = 0;
    let mut refused = 0;
    let mut restarts = 0;
    let mut mixed = 0;
    let mut multi = 0;
    let mut journaled = BTreeMap::<String, usize>::new();
    let mut prunes = 0;
    let mut pruned_entities = 0;

    // Sequence numbers handed out so far: never again, even after the newest events
    // were pruned.
    let mut seen_seqs = BTreeSet::<i64>::new();
    let mut high_water = i64::MIN;
    let mut check_seqs = |path: &Path| {
        let events = Store::new(path).events().expect("reading events");
        for e in &events {
            assert!(
                seen_seqs.contains(&e.seq) || e.seq > high_water,
                "event seq {} was handed out again (the highest ever was {high_water})",
                e.seq
            );
        }
        seen_seqs = events.iter().map(|e| e.seq).collect();
        high_water = high_water.max(seen_seqs.last().copied().unwrap_or(i64::MIN));
    };
    for step in steps {
        if let Op::Restart = step.op {
            journal.restart();
            restarts += 1;
            assert_eq!(check_fold(&path, &model), accepted);
            continue;
        }
        if let Op::Prune { cutoff } = step.op {
            journal.settle();
            check_seqs(&path);
            let events_before = Store::new(&path).events().expect("reading events");
            let expected = model.prunable(cutoff);
            let pruned = prune(&path, cutoff, |_| {}).expect("a prune");
            let got: BTreeMap<String, BTreeSet<String>> = pruned
                .iter()
                .map(|p| {
                    let members = p.members.iter().map(|m| m.id.clone()).collect();
                    (p.entity.id.clone(), members)
                })
                .collect();
            assert_eq!(got, expected, "prune at {cutoff} removed other entities");
            let removed: BTreeSet<&String> = got.values().flatten().collect();
            accepted -= events_before
                .iter()
                .filter(|e| removed.contains(&e.entity_id))
                .count();
            for id in removed {
                model.forget(id);
            }
            prunes += 1;
            pruned_entities += got.len();
            assert_eq!(check_fold(&path, &model), accepted);
            continue;
        }
        let events = model.events_for(&step.op);
        // Applied in order on a scratch copy: later events of one append see the
        // records the earlier ones made.
        let mut scratch = model.clone();
        let mut transitions = Vec::new();
        for (i, (id, event)) in events.iter().enumerate() {
            let prev = scratch.get(id);
            match check_event(prev.as_ref(), id, event) {
                Some(next) => {
                    let name = match event {
                        Event::Task(TaskEvent::Finished { outcome, .. }) => {
                            format!("finished/{}", outcome.status)
                        }
                        Event::Task(e) => e.name().to_string(),
                        Event::Pipeline(e) => format!("pipeline/{}", e.name()),
                        Event::Loop(e) => format!("loop/{}", e.name()),
                        Event::Schedule(_) | Event::ScheduleRun(_) => {
                            unreachable!("no schedules here")
                        }
                    };
                    *journaled.entry(name).or_default() += 1;
                    transitions.push(match (event, &next) {
                        (Event::Task(e), Record::Task(r)) => Transition::Task(e.clone(), r.clone()),
                        (Event::Pipeline(e), Record::Pipeline(r)) => {
                            Transition::Pipeline(e.clone(), r.clone())
                        }
                        _ => unreachable!("apply keeps the kind"),
                    });
                    scratch.accept_record(next);
                }
                None => {
                    // Only a first event may be refused: the ones after it were built
                    // for the state it would have made.
                    assert_eq!(i, 0, "event {i} of {events:?} refused");
                    refused += 1;
                    break;
                }
            }
        }
        if !transitions.is_empty() {
            let kinds: BTreeSet<EntityKind> = transitions.iter().map(|t| t.kind()).collect();
            if kinds.len() > 1 {
                mixed += 1;
            }
            let ids: BTreeSet<&str> = transitions.iter().map(|t| t.id()).collect();
            if ids.len() < transitions.len() {
                multi += 1;
            }
            accepted += transitions.len();
            journal.append(transitions);
            model = scratch;
        }
        if step.settle {
            journal.settle();
        }
    }
    journal.settle();
    assert_eq!(check_fold(&path, &model), accepted);
    check_seqs(&path);

    let mut totals = totals.borrow_mut();
    totals.prunes += prunes;
    totals.pruned_entities += pruned_entities;
    totals.cases += 1;
    totals.operations += steps.len();
    totals.refused += refused;
    totals.restarts += restarts;
    totals.mixed_appends += mixed;
    totals.multi_step_appends += multi;
    totals.most_pending = totals.most_pending.max(journal.most_pending);
    for (name, n) in journaled {
        *totals.journaled.entry(name).or_default() += n;
    }
}

#[test]
fn every_state_table_is_the_fold_of_the_events() {
    let began = Instant::now();
    let totals = RefCell::new(Totals::default());
    let config = Config {
        cases: 64,
        // Regressions are reported in the failure message, not written beside the test.
        failure_persistence: None,
        ..Config::default()
    };
    // A fixed seed: the coverage checks below (every event journaled at least once)
    // must not depend on the luck of a run. The seed's cases were checked to reach
    // every event; a generator change that stops reaching one fails here every time.
    let rng = TestRng::deterministic_rng(config.rng_algorithm);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let result = runner.run(&steps(), |steps| {
        run_case(&steps, &totals);
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }

    let totals = totals.into_inner();
    eprintln!("{totals:#?} in {:?}", began.elapsed());
    assert!(totals.operations >= 2000, "too few operations: {totals:?}");
    assert!(totals.refused > 0, "no invalid event was tried: {totals:?}");
    assert!(totals.restarts > 0, "no restart was tried: {totals:?}");
    assert!(
        totals.pruned_entities > 0,
        "no prune removed anything: {totals:?}"
    );
    assert!(
        totals.most_pending > 1,
        "appends never overlapped: {totals:?}"
    );
    assert!(
        totals.mixed_appends > 0,
        "no append carried two kinds: {totals:?}"
    );
    assert!(
        totals.multi_step_appends > 0,
        "no append carried two steps of one entity: {totals:?}"
    );
    // Every event of every kind, and every way a run ends.
    let mut names: Vec<String> = [
        "submitted",
        "started",
        "cancel_requested",
        "finished/completed",
        "finished/failed",
        "finished/cancelled",
        "lost",
        "cancelled",
        "start_failed",
        "requeued",
        "rate_limited",
        "checkpointed",
        "unblocked",
        "dependency_failed",
    ]
    .map(String::from)
    .to_vec();
    names.extend(["created", "completed", "failed", "cancelled"].map(|n| format!("pipeline/{n}")));
    for name in names {
        assert!(
            totals.journaled.get(&name).copied().unwrap_or(0) > 0,
            "no '{name}' event was journaled: {totals:?}"
        );
    }
}

#[test]
fn concurrent_appends_all_commit_and_still_fold_to_the_table() {
    const THREADS: usize = 8;
    const TASKS: usize = 200;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("beat.db");
    let writer = start_writer(&path);

    let models: Vec<Records> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|thread| {
                let writer = writer.clone();
                scope.spawn(move || {
                    let mut records = Records::new();
                    for n in 0..TASKS {
                        let id = format!("thread-{thread}-task-{n}");
                        let at = (thread * TASKS + n) as i64;
                        let submitted = TaskEvent::Submitted {
                            task: Box::new(TaskRecord {
                                id: id.clone(),
                                prompt: format!("prompt {n}"),
                                status: TaskStatus::Queued,
                                priority: Priority::P2,
                                agent: "shell".into(),
                                working_directory: "/".into(),
                                timeout: 60_000,
                                idle_timeout: None,
                                max_output_buffer: 1 << 20,
                                parent_task_id: None,
                                retry_count: None,
                                retry_of: None,
                                created_at: at,
                                started_at: None,
                                completed_at: None,
                                not_before: None,
                                exit_code: None,
                                signal: None,
                                reason: None,
                                shim_pid: None,
                                shim_start_time: None,
                                cancel_reason: None,
                                output_bytes: None,
                                output_truncated: false,
                                ..Default::default()
                            }),
                        };
                        let started = TaskEvent::Started {
                            at: at + 1,
                            shim_pid: 1000 + n as u32,
                            shim_start_time: n as u64,
                        };
                        let exit = ExitRecord {
                            exit_code: Some((n % 3) as i32),
                            signal: None,
                            killed_for: None,
                            started_at: at + 1,
                            ended_at: at + 2,
                            max_rss_kb: 0,
                            output_bytes: n as u64,
                            truncated: false,
                            spawn_error: None,
                            summary: None,
                        };
                        let finished = TaskEvent::Finished {
                            at: at + 2,
                            outcome: outcome_of_exit(&exit, None),
                        };
                        // All three queued before any is awaited: they may share a
                        // transaction with each other and with other threads' appends.
                        let mut current: Option<TaskRecord> = None;
                        let mut replies = Vec::new();
                        for event in [submitted, started, finished] {
                            let next = apply(current.as_ref(), &event).expect("a valid event");
                            replies.push(writer.append(Append::task(event, next.clone())));
                            current = Some(next);
                        }
                        for reply in replies {
                            reply
                                .blocking_recv()
                                .expect("the writer dropped an append without replying")
                                .expect("an append failed");
                        }
                        records.insert(id, current.expect("three events applied"));
                    }
                    records
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("an appending thread panicked"))
            .collect()
    });
    drop(writer);

    let model = Model {
        records: models.into_iter().flatten().collect(),
        ..Model::default()
    };
    assert_eq!(model.records.len(), THREADS * TASKS);
    let events = check_fold(&path, &model);
    assert_eq!(events, 3 * THREADS * TASKS);

    let mut per_task = BTreeMap::<String, Vec<&'static str>>::new();
    for stored in Store::new(&path).events().expect("reading events") {
        per_task
            .entry(stored.entity_id)
            .or_default()
            .push(stored.event.name());
    }
    assert_eq!(per_task.len(), THREADS * TASKS);
    for (id, names) in per_task {
        assert_eq!(
            names,
            ["submitted", "started", "finished"],
            "events of {id}"
        );
    }
}
