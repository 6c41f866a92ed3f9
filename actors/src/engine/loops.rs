//! Eval loops: creation (validation, git preparation, the `Created` transition),
//! starting the `LoopActor`, routing pause, resume and cancel to it, and starting the
//! actors of the tasks a loop creates (`AdoptOwnedTasks`).
//!
//! Owns: turning a `CreateLoopRequest` into a durable loop. `prepare_loop` builds the
//! loop's first record and its `Created` transition without committing them, so that a
//! schedule can append them in the same transaction as its fire, then send `StartLoop`.
//! Must never: decide a loop's course (its actor and `model::loops` do), or run git on
//! the actix thread.

use std::path::{Path, PathBuf};

use actix::prelude::*;

use super::Engine;
use super::requests::AdoptOwnedTasks;
use super::validation::check_working_directory;
use crate::error::EngineError;
use crate::journal::{Append, Store};
use crate::loops::actor::{CancelLoopNow, LoopActor, LoopDeps, PauseLoopNow, ResumeLoopNow};
use crate::loops::git::Git;
use crate::model::dag::Resolution;
use crate::model::loops::{self, CreateLoopRequest, LoopEvent, LoopRecord};
use crate::model::{Entity, TaskStatus, Transition, now_ms};
use crate::settings::Settings;

/// Create a loop: validated, its git branch prepared, durable, then running.
#[derive(Message)]
#[rtype(result = "Result<LoopRecord, EngineError>")]
pub struct CreateLoop(pub CreateLoopRequest);

/// Start the actor of a loop whose `Created` transition another party committed (a
/// schedule's fire, with `prepare_loop`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StartLoop(pub LoopRecord);

#[derive(Message)]
#[rtype(result = "Result<LoopRecord, EngineError>")]
pub struct PauseLoop {
    pub loop_id: String,
    pub force: bool,
}

#[derive(Message)]
#[rtype(result = "Result<LoopRecord, EngineError>")]
pub struct ResumeLoop {
    pub loop_id: String,
}

#[derive(Message)]
#[rtype(result = "Result<LoopRecord, EngineError>")]
pub struct CancelLoop {
    pub loop_id: String,
    pub reason: Option<String>,
    pub cancel_tasks: bool,
}

/// Whether an agent reports what its runs cost (only Claude Code does).
fn reports_cost(agent: &str) -> bool {
    agent == "claude"
}

/// Resolves the loop's agent (naming the default where none is given) and checks that
/// its judge exists. Blocking (a CLI lookup).
fn resolve_agents(req: &mut CreateLoopRequest, settings: &Settings) -> Result<(), EngineError> {
    let agent =
        crate::agents::resolve_agent(Some(req.agent.as_str()).filter(|a| !a.is_empty()), settings)?;
    req.agent = agent.name().to_string();
    if let Some(judge) = &req.eval_agent {
        crate::agents::resolve_agent(Some(judge), settings)?;
    }
    Ok(())
}

/// Checks `req` as `prepare_loop` would (its agents resolved, its settings, its
/// directory) without touching git: a scheduled loop's settings are refused when the
/// schedule is created, not at each fire. Answers the request with its agent resolved.
pub fn check_loop_request(
    mut req: CreateLoopRequest,
    settings: &Settings,
) -> Result<CreateLoopRequest, EngineError> {
    resolve_agents(&mut req, settings)?;
    let mut probe = req.clone();
    // The branch each fire gets carries the fire time: check that form of it.
    probe.git_branch = probe
        .git_branch
        .map(|b| loops::scheduled_branch_name(&b, now_ms()));
    let record = loops::new_loop("loop-check".into(), &probe, false, now_ms())
        .map_err(|e| EngineError::InvalidInput(e.to_string()))?;
    check_working_directory(Path::new(&record.working_directory))?;
    Ok(req)
}

/// Validates `req` and prepares the loop's git branch (or worktree under
/// `worktrees_root`): the loop's first record and its `Created` transition, not yet
/// committed. Blocking (git, the store): call it off the actix thread.
pub fn prepare_loop(
    mut req: CreateLoopRequest,
    settings: &Settings,
    store: &Store,
    worktrees_root: &Path,
) -> Result<(LoopRecord, Transition), EngineError> {
    resolve_agents(&mut req, settings)?;
    let judge = req.eval_agent.clone().unwrap_or(req.agent.clone());
    let cost = reports_cost(&req.agent)
        && (req.eval_mode != Some(loops::EvalMode::Agent) || reports_cost(&judge));
    let id = format!("loop-{}", uuid::Uuid::now_v7());
    let mut record = loops::new_loop(id, &req, cost, now_ms())
        .map_err(|e| EngineError::InvalidInput(e.to_string()))?;
    check_working_directory(Path::new(&record.working_directory))?;
    if let Some(branch) = record.git_branch.clone() {
        let store_error = |e: rusqlite::Error| EngineError::Store(e.to_string(), "beat.db".into());
        let live = store.live_loops().map_err(store_error)?;
        if !record.worktree {
            loops::check_git_directory_free(&record.working_directory, &live)
                .map_err(EngineError::InvalidInput)?;
        }
        let git = Git::default();
        let dir = PathBuf::from(&record.working_directory);
        let checkout = if record.worktree {
            std::fs::create_dir_all(worktrees_root).map_err(|e| {
                EngineError::InvalidInput(format!(
                    "cannot create {}: {e}",
                    worktrees_root.display()
                ))
            })?;
            git.start_worktree(&dir, &branch, &worktrees_root.join(&record.id))
        } else {
            git.start_in_place(&dir, &branch)
        }
        .map_err(|e| EngineError::InvalidInput(e.to_string()))?;
        record.git_base_branch = checkout.base_branch;
        record.git_start_commit_sha = Some(checkout.start_sha);
        record.worktree_path = checkout
            .worktree_path
            .is_some()
            .then(|| checkout.work_dir.display().to_string());
    }
    let event = LoopEvent::Created {
        record: Box::new(record.clone()),
    };
    LoopRecord::apply(None, &event)?;
    Ok((record.clone(), LoopRecord::transition(event, record)))
}

impl Engine {
    fn loop_deps(&self, ctx: &Context<Self>) -> LoopDeps {
        LoopDeps {
            journal: self.journal.clone().recipient(),
            registry: ctx.address().recipient(),
            cancel: ctx.address().recipient(),
            adopt: ctx.address().recipient(),
            store: self.store.clone(),
            settings: self.settings.clone(),
            runs_root: self.runs_root.clone(),
            programs: self.programs.clone(),
        }
    }

    pub(super) fn spawn_loop_actor(&mut self, record: LoopRecord, ctx: &Context<Self>) {
        if self.live.eval_loop(&record.id).is_some() {
            return;
        }
        let deps = self.loop_deps(ctx);
        let id = record.id.clone();
        let addr = actix::Supervisor::start(move |_| LoopActor::new(record, deps));
        self.live.add_loop(id, addr);
    }

    pub(super) fn worktrees_root(&self) -> PathBuf {
        self.runs_root
            .parent()
            .unwrap_or(&self.runs_root)
            .join("worktrees")
    }

    /// A loop that is not live: unknown, or ended (`action` says what was refused).
    fn loop_not_live(
        &self,
        id: String,
        action: &'static str,
    ) -> ResponseFuture<Result<LoopRecord, EngineError>> {
        let store = self.store.clone();
        Box::pin(async move {
            let found = tokio::task::spawn_blocking({
                let id = id.clone();
                move || store.eval_loop(&id)
            })
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))?
            .map_err(|e| EngineError::Store(e.to_string(), "beat.db".into()))?;
            match found {
                None => Err(EngineError::LoopNotFound(id)),
                Some(l) => Err(EngineError::LoopState {
                    id,
                    action,
                    status: l.status,
                }),
            }
        })
    }
}

impl Handler<CreateLoop> for Engine {
    type Result = ResponseActFuture<Self, Result<LoopRecord, EngineError>>;

    fn handle(&mut self, msg: CreateLoop, _ctx: &mut Context<Self>) -> Self::Result {
        let settings = (self.settings)();
        let store = self.store.clone();
        let root = self.worktrees_root();
        let journal = self.journal.clone();
        let work = async move {
            let (record, created) =
                tokio::task::spawn_blocking(move || prepare_loop(msg.0, &settings, &store, &root))
                    .await
                    .map_err(|e| EngineError::Internal(e.to_string()))??;
            journal.send(Append::new(vec![created])).await??;
            Ok(record)
        };
        Box::pin(
            work.into_actor(self)
                .map(|res: Result<LoopRecord, EngineError>, act, ctx| {
                    let record = res?;
                    act.spawn_loop_actor(record.clone(), ctx);
                    Ok(record)
                }),
        )
    }
}

impl Handler<StartLoop> for Engine {
    type Result = ();

    fn handle(&mut self, msg: StartLoop, ctx: &mut Context<Self>) {
        self.spawn_loop_actor(msg.0, ctx);
    }
}

impl Handler<PauseLoop> for Engine {
    type Result = ResponseFuture<Result<LoopRecord, EngineError>>;

    fn handle(&mut self, msg: PauseLoop, _ctx: &mut Context<Self>) -> Self::Result {
        match self.live.eval_loop(&msg.loop_id) {
            Some(actor) => {
                let req = actor.send(PauseLoopNow { force: msg.force });
                Box::pin(async move { req.await? })
            }
            None => self.loop_not_live(msg.loop_id, "paused (only a running loop can be)"),
        }
    }
}

impl Handler<ResumeLoop> for Engine {
    type Result = ResponseFuture<Result<LoopRecord, EngineError>>;

    fn handle(&mut self, msg: ResumeLoop, _ctx: &mut Context<Self>) -> Self::Result {
        match self.live.eval_loop(&msg.loop_id) {
            Some(actor) => {
                let req = actor.send(ResumeLoopNow);
                Box::pin(async move { req.await? })
            }
            None => self.loop_not_live(msg.loop_id, "resumed (only a paused loop can be)"),
        }
    }
}

impl Handler<CancelLoop> for Engine {
    type Result = ResponseFuture<Result<LoopRecord, EngineError>>;

    fn handle(&mut self, msg: CancelLoop, _ctx: &mut Context<Self>) -> Self::Result {
        match self.live.eval_loop(&msg.loop_id) {
            Some(actor) => {
                let reason = msg
                    .reason
                    .unwrap_or_else(|| "cancelled by the user".to_string());
                let req = actor.send(CancelLoopNow {
                    reason,
                    cancel_tasks: msg.cancel_tasks,
                });
                Box::pin(async move { req.await? })
            }
            None => self.loop_not_live(msg.loop_id, "cancelled"),
        }
    }
}

impl Handler<AdoptOwnedTasks> for Engine {
    type Result = ();

    fn handle(&mut self, msg: AdoptOwnedTasks, ctx: &mut Context<Self>) {
        let batch: Vec<String> = msg.0.iter().map(|r| r.id.clone()).collect();
        for r in &msg.0 {
            for dep in &r.depends_on {
                if self.live.is_live_task(dep) || batch.contains(dep) {
                    self.graph.wait_for(&r.id, dep);
                }
            }
        }
        for r in msg.0 {
            let ready = r.status == TaskStatus::Blocked && !self.graph.is_waiting(&r.id);
            let id = r.id.clone();
            self.spawn_task_actor(r, ctx);
            if ready {
                self.deliver(Resolution::Ready { task: id });
            }
        }
    }
}
