//! Schedules: creation (validated timing and template, one `Created` append), the fire
//! of a run (its tasks or pipeline, the schedule's events and the execution row in ONE
//! append), and the commands routed to a schedule's actor.
//!
//! Owns: turning a schedule's template into task records at each fire (built off the
//! actix thread in one hop, then wired on the engine's state of after the hop), and the
//! wiring of a run to its schedule (the task's `owner`; a pipeline's run found by its id).
//! Must never: decide when or whether a schedule fires (`model::schedule::decide`, in
//! the `ScheduleActor`), or read the machine's clock (the engine's `Clock`).

use actix::prelude::*;

use super::validation::{Lineage, Validator, check};
use super::{Cancel, CancelLoop, CancelPipeline, Engine, NewTask, prepare_loop};
use crate::blocking::off_actix_thread;
use crate::error::EngineError;
use crate::journal::Append;
use crate::model::loops::CreateLoopRequest;
use crate::model::schedule::{
    self, Decision, ExecutionEvent, ExecutionRecord, ExecutionStatus, InvalidSchedule, Launched,
    MissedRunPolicy, NewSchedule, OverlapPolicy, ScheduleEvent, ScheduleRecord, TargetKind,
    TimingRequest,
};
use crate::model::{
    Entity, EntityKind, EntityRef, PipelineRecord, TaskRecord, TaskStatus, Transition,
};
use crate::schedule::{
    Command, FireRun, PipelineTemplate, ScheduleActor, ScheduleCommand, ScheduleDeps, TaskTemplate,
};

/// What a new schedule runs.
#[derive(Debug, Clone)]
pub enum ScheduleTarget {
    Task(TaskTemplate),
    Pipeline(PipelineTemplate),
    /// A loop's request (its `scheduleId` is set at each fire).
    Loop(Box<CreateLoopRequest>),
}

/// A new schedule, as the front ends send it (times as the user wrote them).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<ScheduleRecord, EngineError>")]
pub struct CreateSchedule {
    pub schedule_type: schedule::ScheduleType,
    pub cron_expression: Option<String>,
    pub scheduled_at: Option<String>,
    pub timezone: Option<String>,
    pub expires_at: Option<String>,
    pub max_runs: Option<i64>,
    pub missed_run_policy: MissedRunPolicy,
    pub overlap_policy: OverlapPolicy,
    pub after_schedule_id: Option<String>,
    pub target: ScheduleTarget,
}

/// Pause, resume, cancel (optionally its running tasks and pipelines) or run now.
/// Answers the schedule after the command and, for a run now, the new execution.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<(ScheduleRecord, Vec<ExecutionRecord>), EngineError>")]
pub struct ScheduleOp {
    pub schedule_id: String,
    pub command: Command,
    /// With a cancel: also cancel the runs still running.
    pub cancel_tasks: bool,
}

fn new_task(t: &TaskTemplate) -> NewTask {
    NewTask {
        prompt: t.prompt.clone(),
        priority: t.priority,
        agent: t.agent.clone(),
        working_directory: t.working_directory.clone(),
        timeout: t.timeout,
        model: t.model.clone(),
        system_prompt: t.system_prompt.clone(),
        ..Default::default()
    }
}

/// The task records one fire creates (not yet wired nor journaled): its task, or its
/// pipeline's steps. A template that no longer validates is an error. Blocking (each
/// task's directory and agent are checked): the engine calls it off the actix thread.
fn build_run(s: &ScheduleRecord, validator: &Validator) -> Result<Vec<TaskRecord>, EngineError> {
    let template_error =
        |e: serde_json::Error| EngineError::Internal(format!("schedule {}'s template: {e}", s.id));
    match s.target {
        TargetKind::Task => {
            let t: TaskTemplate =
                serde_json::from_value(s.template.clone()).map_err(template_error)?;
            let owner = EntityRef::new(EntityKind::Schedule, s.id.clone());
            Ok(vec![validator.owned_task(new_task(&t), owner)?])
        }
        // A loop's run is prepared off the actix thread (`fire_loop`), never here.
        TargetKind::Loop => Err(EngineError::Internal(format!(
            "schedule {} runs a loop: its fire goes through fire_loop",
            s.id
        ))),
        TargetKind::Pipeline => {
            let p: PipelineTemplate =
                serde_json::from_value(s.template.clone()).map_err(template_error)?;
            let mut records = Vec::with_capacity(p.steps.len());
            for (i, step) in p.steps.iter().enumerate() {
                let r = validator
                    .build(new_task(step), Lineage::default())
                    .map_err(|e| step_error(i, e))?;
                records.push(r);
            }
            Ok(records)
        }
    }
}

/// A pipeline step's error, saying which step.
fn step_error(i: usize, e: EngineError) -> EngineError {
    EngineError::InvalidInput(format!("step {}: {e}", i + 1))
}

fn invalid(e: InvalidSchedule) -> EngineError {
    EngineError::InvalidInput(e.to_string())
}

impl Engine {
    pub(super) fn schedule_deps(&self, ctx: &Context<Self>) -> ScheduleDeps {
        ScheduleDeps {
            journal: self.journal.clone().recipient(),
            registry: ctx.address().recipient(),
            fire: ctx.address().recipient(),
            timer: self.timer.clone(),
            clock: self.clock.clone(),
            grace_ms: (self.settings)().schedule_grace_period_ms as i64,
            store: self.store.clone(),
        }
    }

    pub(super) fn spawn_schedule_actor(&mut self, record: ScheduleRecord, ctx: &Context<Self>) {
        if self.live.schedule(&record.id).is_some() {
            return;
        }
        let deps = self.schedule_deps(ctx);
        let id = record.id.clone();
        let addr = actix::Supervisor::start(move |_| ScheduleActor::new(record, deps));
        self.live.add_schedule(id, addr);
    }

    /// Wires a fire's records (built by `build_run`, off the actix thread) on the
    /// engine's state of now: a pipeline's steps one after the other, and the first task
    /// waiting for `depends_on` if that still runs.
    fn wire_run(
        &mut self,
        s: &ScheduleRecord,
        mut records: Vec<TaskRecord>,
        depends_on: Option<String>,
    ) -> (Vec<TaskRecord>, Option<PipelineRecord>) {
        if s.target != TargetKind::Pipeline {
            if let (Some(dep), Some(record)) = (depends_on, records.first_mut()) {
                self.wait_on(record, dep);
            }
            return (records, None);
        }
        let id = format!("pipeline-{}", uuid::Uuid::now_v7());
        let delays = vec![None; records.len()];
        let pipeline =
            crate::model::pipeline::wire(&id, &mut records, &delays, self.clock.now_ms());
        if let Some(dep) = depends_on
            && let Some(first) = records.first_mut()
        {
            self.wait_on(first, dep);
        }
        for r in &records {
            for dep in &r.depends_on {
                if r.status == TaskStatus::Blocked {
                    self.graph.wait_for(&r.id, dep);
                }
            }
        }
        (records, Some(pipeline))
    }

    /// `afterSchedule`: the new run's first task waits for `dep` if `dep` still runs.
    fn wait_on(&mut self, record: &mut TaskRecord, dep: String) {
        if self.live.is_live_task(&dep) {
            record.status = TaskStatus::Blocked;
            if !record.depends_on.contains(&dep) {
                record.depends_on.push(dep.clone());
            }
            self.graph.wait_for(&record.id, &dep);
        }
    }

    /// The task that a run of another schedule ends with (its task, or its pipeline's
    /// last step), if it is still live.
    fn last_task_of(&self, run: &ExecutionRecord) -> Option<String> {
        if let Some(t) = &run.task_id {
            return Some(t.clone());
        }
        run.pipeline_id
            .as_deref()
            .and_then(|p| self.live.pipeline_last_step(p))
    }

    /// The transitions of the schedule's `events` and its execution row, applied in order.
    fn schedule_transitions(
        s: &ScheduleRecord,
        events: Vec<ScheduleEvent>,
        execution_id: &str,
    ) -> Result<(Vec<Transition>, ScheduleRecord, Option<ExecutionRecord>), EngineError> {
        let mut next = s.clone();
        let mut transitions = Vec::new();
        let mut row = None;
        for event in events {
            if let Some(r) = schedule::execution_for(&s.id, execution_id, &event) {
                row = Some(r);
            }
            next = ScheduleRecord::apply(Some(&next), &event)?;
            transitions.push(ScheduleRecord::transition(event, next.clone()));
        }
        if let Some(r) = &row {
            transitions.push(ExecutionRecord::transition(
                ExecutionEvent::Recorded {
                    execution: Box::new(r.clone()),
                },
                r.clone(),
            ));
        }
        Ok((transitions, next, row))
    }
}

impl Handler<CreateSchedule> for Engine {
    type Result = ResponseActFuture<Self, Result<ScheduleRecord, EngineError>>;

    fn handle(&mut self, msg: CreateSchedule, _ctx: &mut Context<Self>) -> Self::Result {
        let now = self.clock.now_ms();
        // What needs no I/O is checked here, so that bad input is refused at once.
        let checked = (|| {
            let timing = schedule::validate_timing(
                &TimingRequest {
                    schedule_type: msg.schedule_type,
                    cron_expression: msg.cron_expression.as_deref(),
                    scheduled_at: msg.scheduled_at.as_deref(),
                    timezone: msg.timezone.as_deref(),
                    expires_at: msg.expires_at.as_deref(),
                    max_runs: msg.max_runs,
                },
                now,
            )
            .map_err(invalid)?;
            match &msg.target {
                ScheduleTarget::Task(t) => check(&new_task(t))?,
                ScheduleTarget::Pipeline(p) => {
                    schedule::validate_pipeline_steps(p.steps.len()).map_err(invalid)?;
                    for (i, step) in p.steps.iter().enumerate() {
                        check(&new_task(step)).map_err(|e| step_error(i, e))?;
                    }
                }
                ScheduleTarget::Loop(_) if msg.after_schedule_id.is_some() => {
                    return Err(EngineError::InvalidInput(
                        "afterSchedule is for task and pipeline schedules; a loop schedule cannot follow another schedule".into(),
                    ));
                }
                ScheduleTarget::Loop(_) => {}
            }
            let after = msg
                .after_schedule_id
                .as_deref()
                .map(|a| a.trim().to_string());
            if let Some(a) = &after
                && a.is_empty()
            {
                return Err(EngineError::InvalidInput(
                    "afterSchedule is empty: give the id of the schedule to follow".into(),
                ));
            }
            Ok((timing, after))
        })();
        let (timing, after) = match checked {
            Ok(checked) => checked,
            Err(e) => return Box::pin(fut::ready(Err(e))),
        };
        let validator = self.validator();
        let store = self.store.clone();
        let CreateSchedule {
            missed_run_policy,
            overlap_policy,
            target,
            ..
        } = msg;
        // One hop: the template checked now (its directories, its agents resolved), not
        // at the first fire; and the schedule it follows read.
        let made = off_actix_thread(move || {
            let (target, template) = check_target(target, &validator)?;
            let template = template.map_err(|e| EngineError::Internal(e.to_string()))?;
            if let Some(after) = &after {
                check_followed(&store, after)?;
            }
            let event = NewSchedule {
                id: format!("schedule-{}", uuid::Uuid::now_v7()),
                timing,
                missed_run_policy,
                overlap_policy,
                after_schedule_id: after,
                target,
                template,
            }
            .created(now);
            let record = ScheduleRecord::apply(None, &event)?;
            Ok((event, record))
        });
        Box::pin(made.into_actor(self).then(|made, act, _ctx| match made {
            Ok((event, record)) => act.commit_schedule(event, record),
            Err(e) => Box::pin(fut::ready(Err(e))),
        }))
    }
}

/// A new schedule's target, checked as a fire will build it, with its agents resolved
/// (the template a fire uses). Blocking.
fn check_target(
    target: ScheduleTarget,
    validator: &Validator,
) -> Result<(TargetKind, serde_json::Result<serde_json::Value>), EngineError> {
    Ok(match target {
        ScheduleTarget::Task(mut t) => {
            let built = validator.build(new_task(&t), Lineage::default())?;
            t.agent = Some(built.agent);
            (TargetKind::Task, serde_json::to_value(t))
        }
        ScheduleTarget::Pipeline(mut p) => {
            for (i, step) in p.steps.iter_mut().enumerate() {
                let built = validator
                    .build(new_task(step), Lineage::default())
                    .map_err(|e| step_error(i, e))?;
                step.agent = Some(built.agent);
            }
            (TargetKind::Pipeline, serde_json::to_value(p))
        }
        ScheduleTarget::Loop(req) => {
            let req = super::check_loop_request(*req, validator.settings())?;
            (TargetKind::Loop, serde_json::to_value(req))
        }
    })
}

/// `afterSchedule` must name a schedule whose runs end in a task. Blocking (a read).
fn check_followed(store: &crate::journal::Store, after: &str) -> Result<(), EngineError> {
    let found = store
        .schedule(after)
        .map_err(|e| EngineError::Store(e.to_string(), "beat.db".into()))?;
    match found {
        None => Err(EngineError::InvalidInput(format!(
            "afterSchedule {after}: no such schedule; `beat schedule list` shows the ids"
        ))),
        Some(f) if f.target == TargetKind::Loop => Err(EngineError::InvalidInput(format!(
            "afterSchedule {after} runs a loop; a schedule can follow only a task or pipeline schedule, whose runs end in a task"
        ))),
        Some(_) => Ok(()),
    }
}

impl Engine {
    /// Journals a new schedule's `Created`, then starts its actor.
    fn commit_schedule(
        &mut self,
        event: ScheduleEvent,
        record: ScheduleRecord,
    ) -> ResponseActFuture<Self, Result<ScheduleRecord, EngineError>> {
        let append =
            crate::journal::Append::new(vec![ScheduleRecord::transition(event, record.clone())]);
        let commit = self.journal.send(append);
        Box::pin(commit.into_actor(self).map(move |res, act, ctx| {
            match res {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(EngineError::from(e)),
                Err(e) => return Err(EngineError::from(e)),
            }
            act.spawn_schedule_actor(record.clone(), ctx);
            Ok(record)
        }))
    }
}

impl Handler<FireRun> for Engine {
    type Result = ResponseActFuture<Self, Result<(ScheduleRecord, ExecutionRecord), EngineError>>;

    fn handle(&mut self, msg: FireRun, _ctx: &mut Context<Self>) -> Self::Result {
        if msg.schedule.target == TargetKind::Loop {
            return self.fire_loop(msg);
        }
        // The run's records are built off the actix thread (their directories and agents
        // checked there); whom the run waits for is decided after that hop, on the
        // registry as it is then.
        let validator = self.validator();
        let schedule = msg.schedule.clone();
        let built = off_actix_thread(move || build_run(&schedule, &validator));
        Box::pin(
            built
                .into_actor(self)
                .then(move |built, act, _ctx| act.fire_built(msg, built)),
        )
    }
}

impl Engine {
    /// Fires `msg` with its records `built` (or refuses it, if they could not be).
    fn fire_built(&mut self, msg: FireRun, built: Result<Vec<TaskRecord>, EngineError>) -> Fired {
        let Some(waited) = msg.plan.wait_for.clone() else {
            return self.fire_run(msg, None, built);
        };
        if let Some(task) = self.last_task_of(&waited)
            && self.live.is_live_task(&task)
        {
            return self.fire_run(msg, Some(task), built);
        }
        // `afterSchedule`: the run this one waits for ended after the schedule's actor
        // read it (its row may not say so yet). How it ended is committed: read it, and
        // refuse or go ahead as the rule says, never fire as if nothing were followed.
        let store = self.store.clone();
        let read = async move {
            tokio::task::spawn_blocking(move || how_run_ended(&store, waited))
                .await
                .map_err(|e| EngineError::Internal(e.to_string()))?
                .map_err(|e| EngineError::Store(e.to_string(), "beat.db".into()))
        };
        Box::pin(read.into_actor(self).then(move |res, act, _ctx| {
            let ended = match res {
                Ok(ended) => ended,
                Err(e) => return Box::pin(fut::ready(Err(e))) as Fired,
            };
            let now = act.clock.now_ms();
            let plan = msg.plan.clone();
            match schedule::follow_ended(&msg.schedule, now, &ended, plan) {
                Decision::Fire(plan) => act.fire_run(FireRun { plan: *plan, ..msg }, None, built),
                Decision::Record(events) => act.journal_run(
                    msg.schedule,
                    events,
                    &msg.execution_id,
                    Vec::new(),
                    None,
                    Vec::new(),
                ),
                other => Box::pin(fut::ready(Err(EngineError::Internal(format!(
                    "afterSchedule gave {other:?} for an ended run"
                ))))),
            }
        }))
    }
}

/// The run `waited` launched, with the status and reason its task or pipeline ended
/// with (committed before the engine forgot it); unchanged if it has not ended.
fn how_run_ended(
    store: &crate::journal::Store,
    mut waited: ExecutionRecord,
) -> rusqlite::Result<ExecutionRecord> {
    if let Some((status, reason)) = store.end_of_run(&waited)? {
        waited.status = status;
        waited.reason = reason;
    }
    Ok(waited)
}

impl Engine {
    /// Wires the run of `msg` from its `built` records (its first task waiting for `dep`
    /// when given) and journals it with the schedule's events; a run that could not be
    /// built refuses the occurrence with the reason.
    fn fire_run(
        &mut self,
        msg: FireRun,
        dep: Option<String>,
        built: Result<Vec<TaskRecord>, EngineError>,
    ) -> Fired {
        let at = self.clock.now_ms();
        let s = msg.schedule;
        let plan = msg.plan;
        let built = built.map(|records| self.wire_run(&s, records, dep));
        let (records, pipeline, events) = match built {
            Ok((records, pipeline)) => {
                let launched = Launched {
                    task_id: pipeline
                        .is_none()
                        .then(|| records.first().map(|r| r.id.clone()))
                        .flatten(),
                    pipeline_id: pipeline.as_ref().map(|p| p.id.clone()),
                    loop_id: None,
                };
                let events = plan.events(at, &msg.execution_id, launched);
                (records, pipeline, events)
            }
            // The run cannot be created (its directory is gone, its agent unknown): the
            // occurrence is refused with the reason, and the schedule goes on.
            Err(e) => {
                let mut events = vec![ScheduleEvent::Refused {
                    at,
                    scheduled_for: plan.scheduled_for,
                    next_run_at: plan.next_run_at,
                    reason: format!("its run could not be created: {e}"),
                    buffered: plan.buffered,
                }];
                if let Some(reason) = plan.complete_reason.clone() {
                    events.push(ScheduleEvent::Completed { at, reason });
                }
                (Vec::new(), None, events)
            }
        };
        self.journal_run(s, events, &msg.execution_id, records, pipeline, msg.cancel)
    }

    /// Journals a fire's (or refusal's) schedule events, its execution row, and the
    /// records it created in ONE append; then, for `cancelOther`, stops the old runs.
    fn journal_run(
        &mut self,
        s: ScheduleRecord,
        events: Vec<ScheduleEvent>,
        execution_id: &str,
        records: Vec<TaskRecord>,
        pipeline: Option<PipelineRecord>,
        cancel: Vec<ExecutionRecord>,
    ) -> Fired {
        let (joint, next, row) = match Self::schedule_transitions(&s, events, execution_id) {
            Ok(t) => t,
            Err(e) => {
                for r in &records {
                    self.forget(&r.id);
                }
                return Box::pin(fut::ready(Err(e)));
            }
        };
        let Some(row) = row else {
            return Box::pin(fut::ready(Err(EngineError::Internal(
                "a fire left no execution row".into(),
            ))));
        };
        Box::pin(
            self.admit_all_with(records, pipeline, joint)
                .map(move |res, act, ctx| {
                    res?;
                    // cancelOther: the new run is durable; now stop the old ones.
                    for old in cancel {
                        act.cancel_run(
                            &old,
                            "a newer run started (overlapPolicy cancelOther)",
                            ctx,
                        );
                    }
                    Ok((next, row))
                }),
        )
    }
}

/// What a fire answers: the schedule's new record and the execution row.
type Fired = ResponseActFuture<Engine, Result<(ScheduleRecord, ExecutionRecord), EngineError>>;

impl Engine {
    /// A loop schedule's fire: the loop is prepared (validated, its branch, suffixed
    /// with the fire time, created) off the actix thread; then its `Created`, the
    /// schedule's events and the execution row go in ONE append, and the loop starts.
    /// A loop that cannot be prepared refuses the occurrence with the reason.
    fn fire_loop(&mut self, msg: FireRun) -> Fired {
        let at = self.clock.now_ms();
        let settings = (self.settings)();
        let store = self.store.clone();
        let root = self.worktrees_root();
        let template: Result<CreateLoopRequest, _> =
            serde_json::from_value(msg.schedule.template.clone());
        let schedule_id = msg.schedule.id.clone();
        let prepare = async move {
            let mut req = template.map_err(|e| {
                EngineError::Internal(format!("schedule {schedule_id}'s template: {e}"))
            })?;
            req.schedule_id = Some(schedule_id);
            req.git_branch = req
                .git_branch
                .map(|b| crate::model::loops::scheduled_branch_name(&b, at));
            tokio::task::spawn_blocking(move || prepare_loop(req, &settings, &store, &root))
                .await
                .map_err(|e| EngineError::Internal(e.to_string()))?
        };
        Box::pin(prepare.into_actor(self).then(move |prepared, act, _ctx| {
            let s = msg.schedule;
            let plan = msg.plan;
            let (created, events) = match prepared {
                Ok((record, created)) => {
                    let launched = Launched {
                        task_id: None,
                        pipeline_id: None,
                        loop_id: Some(record.id.clone()),
                    };
                    let events = plan.events(at, &msg.execution_id, launched);
                    (Some((record, created)), events)
                }
                Err(e) => {
                    let mut events = vec![ScheduleEvent::Refused {
                        at,
                        scheduled_for: plan.scheduled_for,
                        next_run_at: plan.next_run_at,
                        reason: format!("its loop could not be created: {e}"),
                        buffered: plan.buffered,
                    }];
                    if let Some(reason) = plan.complete_reason.clone() {
                        events.push(ScheduleEvent::Completed { at, reason });
                    }
                    (None, events)
                }
            };
            let (joint, next, row) = match Self::schedule_transitions(&s, events, &msg.execution_id)
            {
                Ok(t) => t,
                Err(e) => return Box::pin(fut::ready(Err(e))) as Fired,
            };
            let Some(row) = row else {
                return Box::pin(fut::ready(Err(EngineError::Internal(
                    "a fire left no execution row".into(),
                ))));
            };
            let (record, mut transitions) = match created {
                Some((record, t)) => (Some(record), vec![t]),
                None => (None, Vec::new()),
            };
            transitions.extend(joint);
            let cancel = msg.cancel;
            let commit = act.journal.send(Append::new(transitions));
            Box::pin(commit.into_actor(act).map(move |res, act, ctx| {
                match res {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(EngineError::from(e)),
                    Err(e) => return Err(EngineError::from(e)),
                }
                if let Some(record) = record {
                    act.spawn_loop_actor(record, ctx);
                }
                for old in cancel {
                    act.cancel_run(&old, "a newer run started (overlapPolicy cancelOther)", ctx);
                }
                Ok((next, row))
            }))
        }))
    }

    /// Asks the run's task, pipeline or loop to cancel (its end reaches the schedule as
    /// usual).
    fn cancel_run(&mut self, run: &ExecutionRecord, reason: &str, ctx: &mut Context<Self>) {
        let engine = ctx.address();
        if let Some(l) = &run.loop_id {
            engine.do_send(CancelLoop {
                loop_id: l.clone(),
                reason: Some(reason.to_string()),
                cancel_tasks: true,
            });
        } else if let Some(p) = &run.pipeline_id {
            engine.do_send(CancelPipeline {
                pipeline_id: p.clone(),
                reason: Some(reason.to_string()),
            });
        } else if let Some(t) = &run.task_id {
            engine.do_send(Cancel {
                task_id: t.clone(),
                reason: reason.to_string(),
            });
        }
    }
}

impl Handler<ScheduleOp> for Engine {
    type Result =
        ResponseActFuture<Self, Result<(ScheduleRecord, Vec<ExecutionRecord>), EngineError>>;

    fn handle(&mut self, msg: ScheduleOp, _ctx: &mut Context<Self>) -> Self::Result {
        let id = msg.schedule_id.clone();
        if let Some(actor) = self.live.schedule(&id) {
            let cancelling = matches!(msg.command, Command::Cancel { .. });
            let req = actor.send(ScheduleCommand(msg.command));
            let cancel_tasks = msg.cancel_tasks;
            return Box::pin(async move { req.await? }.into_actor(self).map(
                move |res, act, ctx| {
                    let (record, runs) = res?;
                    // Spec 9.10: a schedule's running loops always end with it; its
                    // tasks and pipelines only with cancelTasks.
                    for run in runs
                        .iter()
                        .filter(|r| r.status == ExecutionStatus::Triggered)
                    {
                        if cancelling && run.loop_id.is_some() {
                            act.cancel_run(run, "its schedule was cancelled", ctx);
                        } else if cancel_tasks {
                            act.cancel_run(run, "its schedule was cancelled (cancelTasks)", ctx);
                        }
                    }
                    Ok((record, runs))
                },
            ));
        }
        let store = self.store.clone();
        let command = msg.command;
        Box::pin(
            async move {
                let found = tokio::task::spawn_blocking(move || store.schedule(&id))
                    .await
                    .map_err(|e| EngineError::Internal(e.to_string()))?
                    .map_err(|e| EngineError::Store(e.to_string(), "beat.db".into()))?;
                let s = found.ok_or(EngineError::ScheduleNotFound(msg.schedule_id))?;
                // Not live means finished: the model says why the command is refused.
                let now = crate::model::now_ms();
                let refused = match command {
                    Command::Pause => schedule::plan_pause(&s, now).err(),
                    Command::Resume => schedule::plan_resume(&s, now).err(),
                    Command::Cancel { reason } => {
                        schedule::plan_cancel(&s, now, reason.as_deref()).err()
                    }
                    Command::Trigger => schedule::plan_manual_fire(&s, now).err(),
                };
                Err(match refused {
                    Some(e) => EngineError::InvalidInput(e.to_string()),
                    None => EngineError::Internal(format!("schedule {} has no actor", s.id)),
                })
            }
            .into_actor(self),
        )
    }
}
