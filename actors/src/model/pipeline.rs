//! The pipeline entity and its rules.
//!
//! A pipeline is 2 to 20 steps, tasks that each depend on the one before and that the
//! pipeline owns. It has a record of its own, `running` until its steps decide its end:
//! `completed` when every step completed, `failed` when a step failed, `cancelled` when
//! a step was cancelled or the pipeline was (its unfinished steps cancelled in the same
//! transaction). Transitions are pure; the journal folds them like every other kind.
//! Must never: touch the journal, the clock or actors; the caller passes the time.

use serde::{Deserialize, Serialize};

use super::Millis;
use super::kind::{EntityKind, EntityRef, InvalidTransition};
use super::task::{TaskRecord, TaskStatus};

/// How many steps a pipeline has (as the original).
pub const STEPS: std::ops::RangeInclusive<usize> = 2..=20;

/// Where a pipeline is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PipelineStatus {
    #[default]
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl PipelineStatus {
    pub const ALL: [PipelineStatus; 4] = [
        PipelineStatus::Running,
        PipelineStatus::Completed,
        PipelineStatus::Failed,
        PipelineStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PipelineStatus::Running => "running",
            PipelineStatus::Completed => "completed",
            PipelineStatus::Failed => "failed",
            PipelineStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<PipelineStatus> {
        PipelineStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn is_terminal(self) -> bool {
        self != PipelineStatus::Running
    }
}

impl std::fmt::Display for PipelineStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything the engine knows about one pipeline. The `pipelines` table holds this.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PipelineRecord {
    pub id: String,
    pub status: PipelineStatus,
    /// The steps' task ids, in order.
    pub steps: Vec<String>,
    pub created_at: Millis,
    #[serde(default)]
    pub completed_at: Option<Millis>,
    /// Why it ended, for people.
    #[serde(default)]
    pub reason: Option<String>,
}

/// One transition of a pipeline, as journaled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum PipelineEvent {
    /// A new pipeline, committed with its steps' `Submitted`.
    Created { pipeline: Box<PipelineRecord> },
    /// Every step completed.
    Completed { at: Millis },
    /// A step failed (the steps after it are cancelled by the dependency cascade).
    Failed {
        at: Millis,
        step: String,
        reason: String,
    },
    /// Cancelled: by the user (with its unfinished steps, in one transaction), or
    /// because one of its steps was cancelled.
    Cancelled { at: Millis, reason: String },
}

impl PipelineEvent {
    pub fn name(&self) -> &'static str {
        match self {
            PipelineEvent::Created { .. } => "created",
            PipelineEvent::Completed { .. } => "completed",
            PipelineEvent::Failed { .. } => "failed",
            PipelineEvent::Cancelled { .. } => "cancelled",
        }
    }
}

fn invalid(prev: Option<&PipelineRecord>, event: &PipelineEvent) -> InvalidTransition {
    InvalidTransition {
        kind: EntityKind::Pipeline,
        id: prev.map(|p| p.id.clone()).unwrap_or_default(),
        event: event.name(),
        from: prev
            .map(|p| p.status.as_str().to_string())
            .unwrap_or_else(|| "(none)".to_string()),
    }
}

/// The state machine: the record that `event` makes of `prev`.
pub fn apply(
    prev: Option<&PipelineRecord>,
    event: &PipelineEvent,
) -> Result<PipelineRecord, InvalidTransition> {
    let Some(prev) = prev else {
        return match event {
            PipelineEvent::Created { pipeline }
                if pipeline.status == PipelineStatus::Running
                    && STEPS.contains(&pipeline.steps.len()) =>
            {
                Ok((**pipeline).clone())
            }
            _ => Err(invalid(None, event)),
        };
    };
    if prev.status.is_terminal() {
        return Err(invalid(Some(prev), event));
    }
    let mut next = prev.clone();
    let (status, at, reason) = match event {
        PipelineEvent::Created { .. } => return Err(invalid(Some(prev), event)),
        PipelineEvent::Completed { at } => (
            PipelineStatus::Completed,
            *at,
            "every step completed".to_string(),
        ),
        PipelineEvent::Failed { at, reason, .. } => (PipelineStatus::Failed, *at, reason.clone()),
        PipelineEvent::Cancelled { at, reason } => (PipelineStatus::Cancelled, *at, reason.clone()),
    };
    next.status = status;
    next.completed_at = Some(at);
    next.reason = Some(reason);
    Ok(next)
}

/// Refuses a pipeline of the wrong length, saying what is allowed.
pub fn check_step_count(count: usize) -> Result<(), String> {
    if STEPS.contains(&count) {
        Ok(())
    } else {
        Err(format!(
            "a pipeline has {} to {} steps; {count} given",
            STEPS.start(),
            STEPS.end()
        ))
    }
}

/// Turns validated step tasks into a pipeline: each step owned by the pipeline,
/// numbered from 1, depending on the step before (and so `blocked`); a step's delay
/// counts from when it may start, so the first step's counts from `now`. Returns the
/// pipeline's first record.
pub fn wire(
    id: &str,
    steps: &mut [TaskRecord],
    delays: &[Option<u64>],
    now: Millis,
) -> PipelineRecord {
    let owner = EntityRef::new(EntityKind::Pipeline, id);
    let mut previous: Option<String> = None;
    for (i, step) in steps.iter_mut().enumerate() {
        step.pipeline_id = Some(id.to_string());
        step.pipeline_step = Some(i as u32 + 1);
        step.owner = Some(owner.clone());
        step.start_delay = delays.get(i).copied().flatten().filter(|&d| d > 0);
        match &previous {
            Some(prev) => {
                step.depends_on = vec![prev.clone()];
                step.status = TaskStatus::Blocked;
            }
            None => step.not_before = step.start_delay.map(|d| now + d as i64),
        }
        previous = Some(step.id.clone());
    }
    PipelineRecord {
        id: id.to_string(),
        status: PipelineStatus::Running,
        steps: steps.iter().map(|s| s.id.clone()).collect(),
        created_at: now,
        completed_at: None,
        reason: None,
    }
}

/// What the steps' states mean for a running pipeline: the transition that ends it, or
/// `None` while it goes on. A failure decides before a cancellation (the steps after a
/// failed one are cancelled because of it); `steps` are in order, unknown ones `None`.
pub fn on_steps(
    pipeline: &PipelineRecord,
    steps: &[(String, Option<TaskStatus>)],
    at: Millis,
) -> Option<PipelineEvent> {
    if pipeline.status.is_terminal() {
        return None;
    }
    if let Some((step, _)) = steps.iter().find(|(_, s)| *s == Some(TaskStatus::Failed)) {
        return Some(PipelineEvent::Failed {
            at,
            step: step.clone(),
            reason: format!("step {} ({step}) failed", position(pipeline, step)),
        });
    }
    if let Some((step, _)) = steps
        .iter()
        .find(|(_, s)| *s == Some(TaskStatus::Cancelled))
    {
        return Some(PipelineEvent::Cancelled {
            at,
            reason: format!("step {} ({step}) was cancelled", position(pipeline, step)),
        });
    }
    if !steps.is_empty() && steps.iter().all(|(_, s)| *s == Some(TaskStatus::Completed)) {
        return Some(PipelineEvent::Completed { at });
    }
    None
}

fn position(pipeline: &PipelineRecord, step: &str) -> usize {
    pipeline
        .steps
        .iter()
        .position(|s| s == step)
        .map(|i| i + 1)
        .unwrap_or(0)
}

/// The reason a user's cancel gives the pipeline and its steps.
pub fn cancel_reason(id: &str, given: Option<&str>) -> String {
    match given.map(str::trim).filter(|r| !r.is_empty()) {
        Some(r) => r.to_string(),
        None => format!("pipeline {id} cancelled"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::task::tests_support::queued;

    fn three() -> (PipelineRecord, Vec<TaskRecord>) {
        let mut steps = vec![queued("task-a"), queued("task-b"), queued("task-c")];
        let p = wire("pipeline-x", &mut steps, &[Some(5), None, Some(7)], 100);
        (p, steps)
    }

    #[test]
    fn wiring_chains_the_steps_and_makes_the_pipeline_their_owner() {
        let (p, steps) = three();
        assert_eq!(p.steps, ["task-a", "task-b", "task-c"]);
        assert_eq!(p.status, PipelineStatus::Running);
        assert_eq!(steps[0].status, TaskStatus::Queued);
        assert_eq!(
            steps[0].not_before,
            Some(105),
            "the first step's delay runs from now"
        );
        assert!(steps[0].depends_on.is_empty());
        assert_eq!(steps[1].depends_on, ["task-a"]);
        assert_eq!(steps[2].depends_on, ["task-b"]);
        assert_eq!(steps[1].status, TaskStatus::Blocked);
        assert_eq!(steps[2].start_delay, Some(7));
        assert_eq!(steps[1].start_delay, None);
        for (i, s) in steps.iter().enumerate() {
            assert_eq!(s.pipeline_step, Some(i as u32 + 1));
            assert_eq!(
                s.owner,
                Some(EntityRef::new(EntityKind::Pipeline, "pipeline-x"))
            );
        }
    }

    #[test]
    fn the_steps_decide_the_end() {
        let (p, _) = three();
        let st = |a, b, c| {
            vec![
                ("task-a".to_string(), a),
                ("task-b".to_string(), b),
                ("task-c".to_string(), c),
            ]
        };
        use TaskStatus::*;
        assert_eq!(
            on_steps(&p, &st(Some(Completed), Some(Running), None), 9),
            None
        );
        assert_eq!(
            on_steps(
                &p,
                &st(Some(Completed), Some(Completed), Some(Completed)),
                9
            ),
            Some(PipelineEvent::Completed { at: 9 })
        );
        // The cascade's cancellations do not hide the failure that caused them.
        assert_eq!(
            on_steps(&p, &st(Some(Completed), Some(Cancelled), Some(Failed)), 9),
            Some(PipelineEvent::Failed {
                at: 9,
                step: "task-c".into(),
                reason: "step 3 (task-c) failed".into()
            })
        );
        assert!(matches!(
            on_steps(&p, &st(Some(Cancelled), Some(Blocked), Some(Blocked)), 9),
            Some(PipelineEvent::Cancelled { .. })
        ));
    }

    #[test]
    fn an_ended_pipeline_accepts_nothing_more() {
        let (p, _) = three();
        let done = apply(Some(&p), &PipelineEvent::Completed { at: 3 }).unwrap();
        assert_eq!(done.status, PipelineStatus::Completed);
        assert_eq!(done.completed_at, Some(3));
        for e in [
            PipelineEvent::Completed { at: 4 },
            PipelineEvent::Cancelled {
                at: 4,
                reason: "x".into(),
            },
        ] {
            assert!(apply(Some(&done), &e).is_err());
        }
        assert_eq!(on_steps(&done, &[], 5), None);
        let created = PipelineEvent::Created {
            pipeline: Box::new(p.clone()),
        };
        assert!(apply(Some(&p), &created).is_err(), "created twice");
        let one_step = PipelineRecord {
            steps: vec!["task-a".into()],
            ..p
        };
        assert!(
            apply(
                None,
                &PipelineEvent::Created {
                    pipeline: Box::new(one_step)
                }
            )
            .is_err()
        );
    }

    #[test]
    fn step_counts_outside_2_to_20_are_refused_with_the_range() {
        assert!(check_step_count(2).is_ok() && check_step_count(20).is_ok());
        assert_eq!(
            check_step_count(1).unwrap_err(),
            "a pipeline has 2 to 20 steps; 1 given"
        );
        assert!(check_step_count(21).is_err());
    }

    #[test]
    fn a_cancel_without_a_reason_names_the_pipeline() {
        assert_eq!(
            cancel_reason("pipeline-x", Some("  ")),
            "pipeline pipeline-x cancelled"
        );
        assert_eq!(cancel_reason("pipeline-x", Some("done")), "done");
    }
}
