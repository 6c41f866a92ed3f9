//! `LoopActor`: one live eval loop.
//!
//! Owns: the loop's record while it runs, and driving it through `model::loops`: it asks
//! `decide_next` what to do, does it, and journals what happened. One iteration at a
//! time. Its iteration tasks and its eval (an internal task owned by the loop: `sh -c`
//! through the shim, or the judging agent) are created in the same append as the
//! transition that names them, so a crash never loses or repeats one; the Engine tells
//! the actor (`OwnedTaskEnded`) as each ends. An iteration's tasks (or its eval) are
//! validated on the blocking pool in one hop, while the actor waits (`ctx.wait`), and
//! are created only if the model still asks for them after it. Git runs on the blocking
//! pool and its result is journaled once (`Settled`); both git steps are idempotent, so
//! a crash between them and the journal only redoes them.
//! Must never: decide an outcome itself (the model does), poll its tasks, change a
//! task's record (each task's actor does), or block the actix thread.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix::prelude::*;

use crate::agents::programs::ProgramCache;
use crate::agents::run_dir::RunDir;
use crate::blocking::off_actix_thread;
use crate::engine::requests::{AdoptOwnedTasks, Cancel, NewTask};
use crate::engine::validation::Validator;
use crate::entity::{EntityActor, EntityCore, EntityEnded, Lifecycle, OwnedTaskEnded};
use crate::error::EngineError;
use crate::journal::{Append, Store};
use crate::loops::git::Git;
use crate::model::loops::{
    self, EvalMode, EvalProcessResult, GitStep, IterationPhase, LoopEvent, LoopRecord, LoopStatus,
    NextStep, TaskEnd, TaskEndKind,
};
use crate::model::{Entity, EntityRef, TaskRecord, TaskStatus, Transition, now_ms};
use crate::settings::SettingsSource;

/// What a loop actor needs from the engine.
#[derive(Clone)]
pub struct LoopDeps {
    pub journal: Recipient<Append>,
    pub registry: Recipient<EntityEnded>,
    pub cancel: Recipient<Cancel>,
    pub adopt: Recipient<AdoptOwnedTasks>,
    pub store: Store,
    pub settings: SettingsSource,
    pub runs_root: Arc<Path>,
    /// Where validation last found each agent CLI (the engine's cache).
    pub programs: Arc<ProgramCache>,
}

/// Pause the loop: graceful (the running iteration finishes) or `force` (it is
/// cancelled too).
#[derive(Message)]
#[rtype(result = "Result<LoopRecord, EngineError>")]
pub struct PauseLoopNow {
    pub force: bool,
}

#[derive(Message)]
#[rtype(result = "Result<LoopRecord, EngineError>")]
pub struct ResumeLoopNow;

/// Cancel the loop; with `cancel_tasks`, every unended task of its iteration too.
#[derive(Message)]
#[rtype(result = "Result<LoopRecord, EngineError>")]
pub struct CancelLoopNow {
    pub reason: String,
    pub cancel_tasks: bool,
}

pub struct LoopActor {
    core: EntityCore<LoopRecord>,
    deps: LoopDeps,
    /// The pending wake-up (cooldown, rate-limit reset).
    timer: Option<SpawnHandle>,
}

impl LoopActor {
    pub fn new(record: LoopRecord, deps: LoopDeps) -> LoopActor {
        LoopActor {
            core: EntityCore::new(
                record,
                deps.journal.clone(),
                deps.registry.clone(),
                deps.store.clone(),
            ),
            deps,
            timer: None,
        }
    }

    fn owner(&self) -> EntityRef {
        EntityRef::new(crate::model::EntityKind::Loop, self.core.record.id.clone())
    }

    /// Does what the model says is next.
    fn drive(&mut self, ctx: &mut Context<Self>) {
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
        let now = now_ms();
        match loops::decide_next(&self.core.record, now) {
            NextStep::Done => self.wind_up(ctx),
            NextStep::Paused | NextStep::AwaitTasks { .. } => {}
            NextStep::Evaluate {
                eval_id: Some(_), ..
            } => {}
            NextStep::Start { number } => self.start_iteration(number, ctx),
            NextStep::WaitUntil { at } => {
                let wait = std::time::Duration::from_millis((at - now).max(1) as u64);
                self.timer = Some(ctx.run_later(wait, |act, ctx| {
                    act.timer = None;
                    act.drive(ctx)
                }));
            }
            NextStep::Evaluate {
                number,
                eval_id: None,
            } => self.start_eval(number, ctx),
            NextStep::StopTasks { task_ids, .. } => {
                self.cancel_tasks(task_ids, "the loop's iteration ended")
            }
            NextStep::Settle { number, git } => self.settle(number, git, ctx),
            NextStep::Finish { status, reason } => {
                // The worktree goes before the end is durable, so that whoever sees the
                // loop ended finds it gone (removing it again after a crash is harmless).
                let remove = self.remove_worktree();
                ctx.wait(remove.into_actor(self).map(move |(), act, ctx| {
                    let event = LoopEvent::Finished {
                        at: now_ms(),
                        status,
                        reason,
                    };
                    act.commit_until_durable(vec![event], ctx, |act, ctx| act.wind_up(ctx));
                }));
            }
        }
    }

    /// The loop is terminal and durable: stop what is left of it, then end.
    fn wind_up(&mut self, ctx: &mut Context<Self>) {
        let rec = &self.core.record;
        let mut left = Vec::new();
        if let Some(it) = &rec.latest {
            left.extend(it.unended_task_ids());
            if it.phase == IterationPhase::Evaluating
                && let Some(eval) = &it.eval_task_id
            {
                left.push(eval.clone());
            }
        }
        // A user's cancel without cancelTasks leaves the iteration's work running.
        if rec.status != LoopStatus::Cancelled {
            self.cancel_tasks(left, "the loop ended");
        }
        let remove = self.remove_worktree();
        ctx.wait(remove.into_actor(self).map(|(), act, ctx| act.end(ctx)));
    }

    /// Removes the loop's worktree, if it has one still there; its branch stays (issue 8
    /// point 6).
    fn remove_worktree(&self) -> impl std::future::Future<Output = ()> + 'static {
        let rec = &self.core.record;
        let target = rec
            .worktree_path
            .clone()
            .map(|path| (rec.working_directory.clone(), path, rec.id.clone()));
        async move {
            let Some((repo, path, id)) = target else {
                return;
            };
            let id_for_root = id.clone();
            let removed = tokio::task::spawn_blocking(move || {
                // The loop may work in a folder inside its worktree: remove the worktree
                // itself (`<home>/worktrees/<loop id>`).
                let path = Path::new(&path)
                    .ancestors()
                    .find(|a| a.file_name().is_some_and(|n| n == id_for_root.as_str()))
                    .unwrap_or(Path::new(&path))
                    .to_path_buf();
                if !path.exists() {
                    return Ok(());
                }
                Git::default().remove_worktree(Path::new(&repo), &path)
            })
            .await;
            if let Ok(Err(e)) = removed {
                tracing::warn!(loop_id = %id, error = %e, "could not remove the loop's worktree");
            }
        }
    }

    fn cancel_tasks(&self, task_ids: Vec<String>, reason: &str) {
        for task_id in task_ids {
            self.deps.cancel.do_send(Cancel {
                task_id,
                reason: reason.to_string(),
            });
        }
    }

    fn validator(&self) -> Validator {
        Validator::new((self.deps.settings)(), self.deps.programs.clone())
    }

    /// Whether the model still says `step` (checked after a hop to the blocking pool:
    /// whatever moved the loop on meanwhile has driven it already).
    fn still(&self, step: &NextStep) -> bool {
        loops::decide_next(&self.core.record, now_ms()) == *step
    }

    /// Creates the iteration's tasks and journals them with `IterationStarted`. The
    /// previous task (for `--checkpoint`) is read and every task validated in one hop to
    /// the blocking pool, in order.
    fn start_iteration(&mut self, number: u32, ctx: &mut Context<Self>) {
        let rec = self.core.record.clone();
        let store = self.deps.store.clone();
        let validator = self.validator();
        let owner = self.owner();
        let work = off_actix_thread(move || iteration_tasks(&rec, &store, &validator, owner));
        ctx.wait(work.into_actor(self).map(move |res, act, ctx| {
            if !act.still(&NextStep::Start { number }) {
                return;
            }
            match res {
                Ok(tasks) => {
                    let event = LoopEvent::IterationStarted {
                        at: now_ms(),
                        number,
                        task_ids: tasks.iter().map(|t| t.id.clone()).collect(),
                    };
                    act.commit_with_tasks(event, tasks, ctx);
                }
                Err(e) => act.give_up(
                    format!("could not create iteration {number}'s task: {e}"),
                    ctx,
                ),
            }
        }));
    }

    /// Journals `event` with the new `tasks` in one append, then has the Engine start
    /// their actors.
    fn commit_with_tasks(
        &mut self,
        event: LoopEvent,
        tasks: Vec<TaskRecord>,
        ctx: &mut Context<Self>,
    ) {
        let mut joint: Vec<Transition> = Vec::with_capacity(tasks.len());
        for t in &tasks {
            let submitted = crate::model::TaskEvent::Submitted {
                task: Box::new(t.clone()),
            };
            joint.push(TaskRecord::transition(submitted, t.clone()));
        }
        self.commit(vec![event], joint, ctx, move |act, ctx, res| match res {
            Ok(()) => {
                act.deps.adopt.do_send(AdoptOwnedTasks(tasks));
                act.drive(ctx);
            }
            Err(EngineError::Journal(e)) => {
                tracing::error!(loop_id = %act.core.record.id, error = %e, "journal refused new loop work; retrying");
                ctx.run_later(std::time::Duration::from_secs(1), |act, ctx| act.drive(ctx));
            }
            Err(e) => {
                tracing::error!(loop_id = %act.core.record.id, error = %e, "impossible loop transition; reloading");
                ctx.stop();
            }
        });
    }

    /// An error the loop cannot get past ends it as failed, saying why.
    fn give_up(&mut self, reason: String, ctx: &mut Context<Self>) {
        let event = LoopEvent::Finished {
            at: now_ms(),
            status: LoopStatus::Failed,
            reason,
        };
        self.commit_until_durable(vec![event], ctx, |act, ctx| act.wind_up(ctx));
    }

    /// Starts the eval: an internal task owned by the loop, journaled with `EvalStarted`.
    fn start_eval(&mut self, number: u32, ctx: &mut Context<Self>) {
        let rec = &self.core.record;
        let req = match rec.eval_mode {
            EvalMode::Shell => {
                let Some(spec) = loops::shell_eval_spec(rec) else {
                    return;
                };
                // The eval gets its variables in front of the command (ids are plain).
                let exports: Vec<String> = spec
                    .env
                    .iter()
                    .map(|(k, v)| format!("{k}='{}'", v.replace('\'', "'\\''")))
                    .collect();
                let script = format!("export {}\n{}", exports.join(" "), rec.exit_condition);
                task_request(rec, script, "shell", Some(spec.timeout_ms))
            }
            EvalMode::Agent => {
                let Some(prompt) = loops::agent_eval_prompt(rec) else {
                    return;
                };
                let judge = rec.eval_agent.clone().unwrap_or(rec.agent.clone());
                task_request(rec, prompt, &judge, Some(rec.eval_timeout))
            }
        };
        let validator = self.validator();
        let owner = self.owner();
        let work = off_actix_thread(move || validator.owned_task(req, owner));
        ctx.wait(work.into_actor(self).map(move |res, act, ctx| {
            let step = NextStep::Evaluate {
                number,
                eval_id: None,
            };
            if !act.still(&step) {
                return;
            }
            match res {
                Ok(mut task) => {
                    task.role = Some("eval".into());
                    let event = LoopEvent::EvalStarted {
                        at: now_ms(),
                        number,
                        eval_id: task.id.clone(),
                    };
                    act.commit_with_tasks(event, vec![task], ctx);
                }
                Err(e) => act.give_up(
                    format!("could not start iteration {number}'s eval: {e}"),
                    ctx,
                ),
            }
        }));
    }

    /// Git's step for the iteration, off the actix thread, then `Settled`.
    fn settle(&mut self, number: u32, step: GitStep, ctx: &mut Context<Self>) {
        let rec = &self.core.record;
        let dir = PathBuf::from(rec.work_dir());
        let branch = rec.git_branch.clone().unwrap_or_default();
        let work = tokio::task::spawn_blocking(move || {
            let git = Git::default();
            match step {
                GitStep::None => Ok((None, None)),
                GitStep::Commit { message } => git
                    .commit_all(&dir, &branch, &message)
                    .map(|c| (Some(c.sha), c.diff_summary)),
                GitStep::ResetTo { sha } => git
                    .reset_to(&dir, &branch, &sha)
                    .map(|()| (Some(sha), None)),
            }
        });
        ctx.wait(work.into_actor(self).map(move |res, act, ctx| {
            let (commit_sha, diff_summary) = match res {
                Ok(Ok(done)) => done,
                Ok(Err(e)) => {
                    return act.give_up(format!("git failed in iteration {number}: {e}"), ctx);
                }
                Err(e) => {
                    return act.give_up(
                        format!("git did not finish in iteration {number}: {e}"),
                        ctx,
                    );
                }
            };
            let event = LoopEvent::Settled {
                at: now_ms(),
                number,
                commit_sha,
                diff_summary,
            };
            act.commit_until_durable(vec![event], ctx, |act, ctx| act.drive(ctx));
        }));
    }

    /// Reads `task_ids` and takes in every one that ended (after a restart, or as the
    /// Engine tells of one).
    fn check_tasks(&mut self, task_ids: Vec<String>, ctx: &mut Context<Self>) {
        let store = self.deps.store.clone();
        let read = tokio::task::spawn_blocking(move || store.tasks_by_id(&task_ids));
        ctx.wait(read.into_actor(self).map(|res, act, ctx| match res {
            Ok(Ok(tasks)) => act.absorb(tasks, ctx),
            other => {
                tracing::error!(loop_id = %act.core.record.id, ?other, "could not read the loop's tasks");
                ctx.stop(); // the supervisor restarts the actor, which reads again
            }
        }));
    }

    /// Journals the ends of the iteration's tasks among `tasks`, or the eval's result.
    fn absorb(&mut self, tasks: Vec<TaskRecord>, ctx: &mut Context<Self>) {
        let Some(it) = self.core.record.latest.clone() else {
            return self.drive(ctx);
        };
        let ended: Vec<TaskRecord> = tasks
            .into_iter()
            .filter(|t| t.status.is_terminal())
            .collect();
        let unended = it.unended_task_ids();
        let events: Vec<LoopEvent> = it
            .task_ids
            .iter()
            .filter(|id| unended.contains(id))
            .filter_map(|id| ended.iter().find(|t| &t.id == id))
            .map(|t| LoopEvent::TaskEnded {
                at: now_ms(),
                number: it.iteration_number,
                task_id: t.id.clone(),
                end: task_end(t),
            })
            .collect();
        if !events.is_empty() {
            return self.commit_until_durable(events, ctx, |act, ctx| act.drive(ctx));
        }
        let eval = ended.into_iter().find(|t| {
            it.phase == IterationPhase::Evaluating && it.eval_task_id.as_deref() == Some(&t.id)
        });
        match eval {
            Some(t) => self.evaluated(it.iteration_number, t, ctx),
            None => self.drive(ctx),
        }
    }

    /// The eval task ended: read what it printed, journal the result.
    fn evaluated(&mut self, number: u32, task: TaskRecord, ctx: &mut Context<Self>) {
        let strategy = self.core.record.strategy;
        let mode = self.core.record.eval_mode;
        let runs_root = self.deps.runs_root.clone();
        let work = tokio::task::spawn_blocking(move || match mode {
            EvalMode::Shell => {
                let dir = RunDir::new(&runs_root, &task.id);
                let run = EvalProcessResult {
                    exit_code: task.exit_code,
                    signal: task.signal.clone(),
                    timed_out_after: task
                        .reason
                        .as_deref()
                        .filter(|r| r.starts_with("timed out"))
                        .map(|_| task.timeout),
                    stdout: read_tail(&dir.stdout()),
                    stderr: read_tail(&dir.stderr()),
                };
                let mut report = loops::shell_eval_report(strategy, &run);
                if task.status == TaskStatus::Cancelled && report.message.is_none() {
                    report.message = Some("the eval was cancelled".into());
                }
                report
            }
            EvalMode::Agent => {
                let failure = (task.status != TaskStatus::Completed).then(|| {
                    task.reason
                        .clone()
                        .unwrap_or_else(|| task.status.to_string())
                });
                loops::agent_eval_report(
                    strategy,
                    task.result.as_deref(),
                    failure.as_deref(),
                    task.usage.clone(),
                )
            }
        });
        ctx.wait(work.into_actor(self).map(move |res, act, ctx| {
            let report = match res {
                Ok(report) => report,
                Err(e) => {
                    return act.give_up(
                        format!("reading iteration {number}'s eval failed: {e}"),
                        ctx,
                    );
                }
            };
            let event = LoopEvent::Evaluated {
                at: now_ms(),
                number,
                report,
            };
            act.commit_until_durable(vec![event], ctx, |act, ctx| act.drive(ctx));
        }));
    }

    /// The tasks whose ends the loop still waits for (after a restart).
    fn awaited(&self) -> Vec<String> {
        let Some(it) = &self.core.record.latest else {
            return Vec::new();
        };
        let mut ids = it.unended_task_ids();
        if it.phase == IterationPhase::Evaluating
            && let Some(eval) = &it.eval_task_id
        {
            ids.push(eval.clone());
        }
        ids
    }
}

/// A task request of the loop `rec`, in its directory.
fn task_request(rec: &LoopRecord, prompt: String, agent: &str, timeout: Option<u64>) -> NewTask {
    NewTask {
        prompt,
        priority: rec.priority,
        agent: Some(agent.to_string()),
        working_directory: PathBuf::from(rec.work_dir()),
        timeout,
        model: rec.model.clone(),
        system_prompt: rec.system_prompt.clone(),
        ..Default::default()
    }
}

/// The next iteration's tasks, validated, in order: each after the one before; the
/// first resuming the previous tail task's session under `--checkpoint` (whose
/// checkpoint its prompt carries). Blocking (a read, and each task's directory and
/// agent): run it off the actix thread.
fn iteration_tasks(
    rec: &LoopRecord,
    store: &Store,
    validator: &Validator,
    owner: EntityRef,
) -> Result<Vec<TaskRecord>, EngineError> {
    let (prompts, session) = if loops::continues_session(rec) {
        let previous = rec.latest.as_ref().and_then(|i| i.task_id());
        let prev_task = previous.and_then(|id| store.task(id).ok().flatten());
        let prompts = loops::iteration_prompts(
            rec,
            rec.latest.as_ref(),
            prev_task.as_ref().and_then(|t| t.checkpoint.as_ref()),
        );
        (prompts, prev_task.and_then(|t| t.session_id))
    } else {
        (loops::iteration_prompts(rec, None, None), None)
    };
    let mut tasks: Vec<TaskRecord> = Vec::with_capacity(prompts.len());
    for prompt in prompts {
        let req = task_request(rec, prompt, &rec.agent, None);
        let mut t = validator.owned_task(req, owner.clone())?;
        t.role = Some("iteration".into());
        if let Some(prev) = tasks.last() {
            t.depends_on = vec![prev.id.clone()];
            t.status = TaskStatus::Blocked;
        }
        tasks.push(t);
    }
    if let (Some(session), Some(t)) = (session, tasks.first_mut()) {
        let resumable = crate::agents::adapter_for(&t.agent, validator.settings())
            .map(|a| a.supports_resume())
            .unwrap_or(false);
        if resumable {
            t.resume_session = Some(session);
        }
    }
    Ok(tasks)
}

/// How a task's end counts for its iteration.
fn task_end(t: &TaskRecord) -> TaskEnd {
    let kind = match t.status {
        TaskStatus::Completed => TaskEndKind::Completed,
        // A step cancelled because an earlier step failed is that failure, not a user's.
        TaskStatus::Cancelled if t.cascade_root.is_none() => TaskEndKind::Cancelled,
        _ => TaskEndKind::Failed,
    };
    TaskEnd {
        kind,
        reason: t.reason.clone().unwrap_or_else(|| t.status.to_string()),
        exit_code: t.exit_code,
        usage: t.usage.clone(),
        rate_limited: false,
        rate_limit_reset: None,
    }
}

/// The last 64 KiB of a file (an eval's output), lossily decoded.
fn read_tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    const TAIL: u64 = 64 * 1024;
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(TAIL)));
    let mut bytes = Vec::new();
    let _ = f.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

impl EntityActor for LoopActor {
    type Entity = LoopRecord;

    fn core(&self) -> &EntityCore<LoopRecord> {
        &self.core
    }

    fn core_mut(&mut self) -> &mut EntityCore<LoopRecord> {
        &mut self.core
    }

    fn resume(&mut self, ctx: &mut Context<Self>) {
        if self.core.record.status.is_terminal() {
            return self.wind_up(ctx);
        }
        // A task may have ended while no daemon ran: the journal says.
        let awaited = self.awaited();
        if awaited.is_empty() {
            self.drive(ctx);
        } else {
            self.check_tasks(awaited, ctx);
        }
    }
}

impl Actor for LoopActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.start_entity(ctx);
    }
}

impl Supervised for LoopActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.restart_entity();
        self.timer = None;
    }
}

impl Handler<OwnedTaskEnded> for LoopActor {
    type Result = ();

    fn handle(&mut self, msg: OwnedTaskEnded, ctx: &mut Context<Self>) {
        if self.awaited().contains(&msg.task_id) {
            self.check_tasks(vec![msg.task_id], ctx);
        }
    }
}

impl LoopActor {
    /// Commits a user's command and answers with the record it made.
    fn command(
        &mut self,
        event: LoopEvent,
        cancel: Vec<String>,
        ctx: &mut Context<Self>,
    ) -> ResponseFuture<Result<LoopRecord, EngineError>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.commit(vec![event], Vec::new(), ctx, move |act, ctx, res| {
            let _ = reply.send(res.map(|()| act.core.record.clone()));
            act.cancel_tasks(cancel, "the loop was cancelled or force-paused");
            act.drive(ctx);
        });
        Box::pin(async move {
            answer.await.unwrap_or_else(|_| {
                Err(EngineError::Internal(
                    "the loop stopped before answering".into(),
                ))
            })
        })
    }

    fn refuse(&self, action: &'static str) -> ResponseFuture<Result<LoopRecord, EngineError>> {
        let e = EngineError::LoopState {
            id: self.core.record.id.clone(),
            action,
            status: self.core.record.status,
        };
        Box::pin(async move { Err(e) })
    }
}

impl Handler<PauseLoopNow> for LoopActor {
    type Result = ResponseFuture<Result<LoopRecord, EngineError>>;

    fn handle(&mut self, msg: PauseLoopNow, ctx: &mut Context<Self>) -> Self::Result {
        if self.core.record.status != LoopStatus::Running {
            return self.refuse("paused (only a running loop can be)");
        }
        let cancel = if msg.force {
            self.awaited()
        } else {
            Vec::new()
        };
        let event = LoopEvent::Paused {
            at: now_ms(),
            force: msg.force,
        };
        self.command(event, cancel, ctx)
    }
}

impl Handler<ResumeLoopNow> for LoopActor {
    type Result = ResponseFuture<Result<LoopRecord, EngineError>>;

    fn handle(&mut self, _msg: ResumeLoopNow, ctx: &mut Context<Self>) -> Self::Result {
        if self.core.record.status != LoopStatus::Paused {
            return self.refuse("resumed (only a paused loop can be)");
        }
        self.command(LoopEvent::Resumed { at: now_ms() }, Vec::new(), ctx)
    }
}

impl Handler<CancelLoopNow> for LoopActor {
    type Result = ResponseFuture<Result<LoopRecord, EngineError>>;

    fn handle(&mut self, msg: CancelLoopNow, ctx: &mut Context<Self>) -> Self::Result {
        if self.core.record.status.is_terminal() {
            return self.refuse("cancelled");
        }
        let mut cancel = Vec::new();
        if msg.cancel_tasks {
            cancel = self.awaited();
        } else if let Some(it) = &self.core.record.latest
            && it.phase == IterationPhase::Evaluating
            && let Some(eval) = &it.eval_task_id
        {
            // The eval is the loop's own: nothing would read its result.
            cancel.push(eval.clone());
        }
        let event = LoopEvent::Cancelled {
            at: now_ms(),
            reason: msg.reason,
        };
        self.command(event, cancel, ctx)
    }
}
