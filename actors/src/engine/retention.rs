//! Retention: finished tasks and pipelines older than `taskRetentionDays` are removed,
//! at start and then once a day on the engine's wall-clock timer; `Prune` does it now
//! with any age (`beat prune`).
//!
//! Owns: the daily timer, the cutoff, and removing run folders of what the journal
//! removed (`journal::prune` chooses and deletes, one transaction per entity).
//! Must never: run SQLite or remove folders on the actor thread (all of it runs on the
//! blocking pool), or remove a run folder before its rows are gone (a crash in between
//! leaves a folder without a task, never a task without its output).

use std::path::Path;

use actix::prelude::*;

use super::Engine;
use crate::agents::run_dir::RunDir;
use crate::clock_timer::{SystemClock, sleep_until_ms};
use crate::error::EngineError;
use crate::journal::{Pruned, prune};
use crate::model::{EntityKind, Millis, now_ms};

/// A day, the period of the automatic prune.
const DAY_MS: Millis = 86_400_000;

/// Remove finished entities that ended at least `older_than_ms` ago (default: the
/// `taskRetentionDays` setting); `Some(0)` removes every finished one that nothing
/// unfinished needs.
#[derive(Message, Debug, Clone, Copy, Default)]
#[rtype(result = "Result<PruneReport, EngineError>")]
pub struct Prune {
    pub older_than_ms: Option<u64>,
}

/// What a prune removed.
#[derive(Debug, Clone, Default)]
pub struct PruneReport {
    /// The age used: what ended at or before `now - older_than_ms` went.
    pub older_than_ms: u64,
    pub tasks: Vec<String>,
    pub pipelines: Vec<String>,
    pub loops: Vec<String>,
    /// Executions of schedules (`schedule_runs` rows).
    pub schedule_runs: Vec<String>,
    /// Bytes of run folders removed.
    pub run_folder_bytes: u64,
}

/// The daily prune (the first at start).
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct PruneDaily;

impl Handler<Prune> for Engine {
    type Result = ResponseFuture<Result<PruneReport, EngineError>>;

    fn handle(&mut self, msg: Prune, _ctx: &mut Context<Self>) -> Self::Result {
        let days = u64::from((self.settings)().task_retention_days);
        let older_than_ms = msg.older_than_ms.unwrap_or(days * DAY_MS as u64);
        let db = self.store.path().to_path_buf();
        let runs_root = self.runs_root.to_path_buf();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || run_prune(&db, &runs_root, older_than_ms))
                .await
                .map_err(|e| EngineError::Internal(e.to_string()))?
        })
    }
}

impl Handler<PruneDaily> for Engine {
    type Result = ();

    fn handle(&mut self, _msg: PruneDaily, ctx: &mut Context<Self>) {
        let prune = ctx.address().send(Prune::default());
        ctx.spawn(
            async move {
                match prune.await {
                    Ok(Ok(r)) if r.tasks.is_empty() && r.pipelines.is_empty() => {}
                    Ok(Ok(r)) => tracing::info!(
                        tasks = r.tasks.len(),
                        pipelines = r.pipelines.len(),
                        bytes = r.run_folder_bytes,
                        "removed finished work past its retention"
                    ),
                    other => {
                        tracing::warn!(?other, "the daily prune failed; it runs again in a day")
                    }
                }
                sleep_until_ms(&SystemClock, now_ms() + DAY_MS).await;
            }
            .into_actor(self)
            .map(|_, _, ctx| ctx.notify(PruneDaily)),
        );
    }
}

/// Prunes the journal, then each removed task's run folder. Blocking.
fn run_prune(db: &Path, runs_root: &Path, older_than_ms: u64) -> Result<PruneReport, EngineError> {
    let cutoff = now_ms().saturating_sub(older_than_ms.min(i64::MAX as u64) as i64);
    let mut report = PruneReport {
        older_than_ms,
        ..Default::default()
    };
    let removed_folders = |pruned: &Pruned, bytes: &mut u64| {
        for task in pruned.task_ids() {
            let folder = RunDir::new(runs_root, task).path;
            *bytes += folder_size(&folder);
            if let Err(e) = std::fs::remove_dir_all(&folder)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(folder = %folder.display(), error = %e, "could not remove a pruned task's run folder");
            }
        }
    };
    let mut bytes = 0;
    let pruned = prune(db, cutoff, |p| removed_folders(p, &mut bytes))
        .map_err(|e| EngineError::Store(e.to_string(), db.display().to_string()))?;
    report.run_folder_bytes = bytes;
    for p in pruned {
        match p.entity.kind {
            EntityKind::Pipeline => report.pipelines.push(p.entity.id.clone()),
            EntityKind::Loop => report.loops.push(p.entity.id.clone()),
            EntityKind::ScheduleRun => report.schedule_runs.push(p.entity.id.clone()),
            EntityKind::Task | EntityKind::Schedule => {}
        }
        report.tasks.extend(p.task_ids().map(String::from));
    }
    Ok(report)
}

/// Bytes of the files under `dir` (0 when it is gone).
fn folder_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => folder_size(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

/// Starts the daily prune when the engine starts: the first runs now.
pub(super) fn start_daily(ctx: &mut Context<Engine>) {
    ctx.notify(PruneDaily);
}
