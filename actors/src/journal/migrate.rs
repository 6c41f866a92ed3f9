//! Data migrations that SQL cannot say well.
//!
//! Owns: building records of new kinds from what older schemas stored. Each function
//! here belongs to one migration in `schema.rs` and runs inside its transaction.
//! Must never: change once released (as the migrations themselves).

use std::collections::BTreeMap;

use rusqlite::Transaction;

use super::sqlite::write_transition;
use crate::model::pipeline::{self, PipelineEvent, PipelineRecord, PipelineStatus};
use crate::model::{PipelineRecord as Pipeline, TaskStatus, now_ms};

/// Schema 4: pipelines get rows of their own. Before, a pipeline was only its steps
/// (tasks sharing `pipeline_id`), its state derived from theirs; each becomes a
/// `created` event and, if its steps already decided its end, that end, so that the
/// `pipelines` table is the fold of `events` from the start.
pub(super) fn pipelines_from_steps(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    struct Step {
        id: String,
        status: TaskStatus,
        created_at: i64,
        completed_at: Option<i64>,
    }
    let mut pipelines: BTreeMap<String, Vec<Step>> = BTreeMap::new();
    {
        let mut stmt = tx.prepare(
            "SELECT pipeline_id, id, status, created_at, completed_at FROM tasks
             WHERE pipeline_id IS NOT NULL ORDER BY pipeline_id, pipeline_step",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let status: String = row.get(2)?;
            pipelines.entry(row.get(0)?).or_default().push(Step {
                id: row.get(1)?,
                status: TaskStatus::parse(&status).unwrap_or(TaskStatus::Failed),
                created_at: row.get(3)?,
                completed_at: row.get(4)?,
            });
        }
    }
    let (mut event_json, mut record_json) = (Vec::new(), Vec::new());
    let at = now_ms();
    for (id, steps) in pipelines {
        let created = PipelineRecord {
            id: id.clone(),
            status: PipelineStatus::Running,
            steps: steps.iter().map(|s| s.id.clone()).collect(),
            created_at: steps.iter().map(|s| s.created_at).min().unwrap_or(at),
            completed_at: None,
            reason: None,
        };
        let ended_at = steps
            .iter()
            .filter_map(|s| s.completed_at)
            .max()
            .unwrap_or(at);
        let statuses: Vec<(String, Option<TaskStatus>)> = steps
            .iter()
            .map(|s| (s.id.clone(), Some(s.status)))
            .collect();
        let mut events = vec![PipelineEvent::Created {
            pipeline: Box::new(created.clone()),
        }];
        events.extend(pipeline::on_steps(&created, &statuses, ended_at));
        let mut state: Option<Pipeline> = None;
        for event in events {
            // A pipeline of an unexpected shape (one step) is left as its steps are.
            let Ok(next) = pipeline::apply(state.as_ref(), &event) else {
                break;
            };
            write_transition(tx, at, &event, &next, &mut event_json, &mut record_json)?;
            state = Some(next);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! A database as schema 3 left it, migrated: every record reads back as it was, and
    //! pipelines have rows equal to the fold of their events.

    use rusqlite::{Connection, params};

    use super::super::schema::{migrate_to, open_write_connection};
    use crate::journal::{Store, TaskQuery};
    use crate::model::task::{Checkpoint, Usage};
    use crate::model::{
        EntityKind, EntityRef, Event, PipelineStatus, Priority, Record, TaskRecord, TaskStatus,
    };

    fn old_task(conn: &Connection, t: &TaskRecord) {
        conn.execute(
            "INSERT INTO tasks(id, prompt, status, priority, agent, working_directory, timeout,
             idle_timeout, max_output_buffer, parent_task_id, retry_count, retry_of, created_at,
             started_at, completed_at, not_before, exit_code, signal, reason, shim_pid,
             shim_start_time, cancel_reason, output_bytes, output_truncated, model,
             system_prompt, session_id, resume_session, result, usage, rate_limit_retries,
             checkpoint, depends_on, continue_from, pipeline_id, pipeline_step, start_delay,
             cascade_root)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
             ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32,
             ?33, ?34, ?35, ?36, ?37, ?38)",
            params![
                t.id,
                t.prompt,
                t.status.as_str(),
                t.priority.as_str(),
                t.agent,
                t.working_directory,
                t.timeout as i64,
                t.idle_timeout.map(|v| v as i64),
                t.max_output_buffer as i64,
                t.parent_task_id,
                t.retry_count,
                t.retry_of,
                t.created_at,
                t.started_at,
                t.completed_at,
                t.not_before,
                t.exit_code,
                t.signal,
                t.reason,
                t.shim_pid,
                t.shim_start_time.map(|v| v as i64),
                t.cancel_reason,
                t.output_bytes.map(|v| v as i64),
                t.output_truncated,
                t.model,
                t.system_prompt,
                t.session_id,
                t.resume_session,
                t.result,
                t.usage.as_ref().map(|u| serde_json::to_string(u).unwrap()),
                t.rate_limit_retries,
                t.checkpoint
                    .as_ref()
                    .map(|c| serde_json::to_string(c).unwrap()),
                (!t.depends_on.is_empty()).then(|| serde_json::to_string(&t.depends_on).unwrap()),
                t.continue_from,
                t.pipeline_id,
                t.pipeline_step,
                t.start_delay.map(|v| v as i64),
                t.cascade_root,
            ],
        )
        .unwrap();
    }

    fn task(id: &str, status: TaskStatus, created_at: i64) -> TaskRecord {
        TaskRecord {
            id: id.into(),
            prompt: format!("prompt of {id}, with \"quotes\" and ünïcode"),
            status,
            priority: Priority::P1,
            agent: "claude".into(),
            working_directory: "/work".into(),
            timeout: 60_000,
            max_output_buffer: 1 << 20,
            created_at,
            ..Default::default()
        }
    }

    #[test]
    fn a_schema_3_database_migrates_with_every_field_and_pipelines_get_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("beat.db");
        let mut conn = Connection::open(&path).unwrap();
        migrate_to(&mut conn, 3).unwrap();

        // Every field set, in a finished task.
        let full = TaskRecord {
            idle_timeout: Some(5_000),
            parent_task_id: Some("task-root".into()),
            retry_count: Some(2),
            retry_of: Some("task-prev".into()),
            started_at: Some(11),
            completed_at: Some(12),
            not_before: Some(9),
            exit_code: Some(3),
            signal: Some("SIGTERM".into()),
            reason: Some("exited with code 3".into()),
            shim_pid: Some(4242),
            shim_start_time: Some(99),
            cancel_reason: Some("stop".into()),
            output_bytes: Some(1234),
            output_truncated: true,
            model: Some("opus".into()),
            system_prompt: Some("be brief".into()),
            session_id: Some("sess".into()),
            resume_session: Some("sess0".into()),
            result: Some("answer".into()),
            usage: Some(Usage {
                input_tokens: 10,
                output_tokens: 20,
                cache_read_tokens: 1,
                cache_write_tokens: 2,
                cost_usd: Some(0.25),
            }),
            rate_limit_retries: 1,
            checkpoint: Some(Checkpoint {
                checkpoint_type: TaskStatus::Failed,
                output_summary: "last lines".into(),
                error_summary: Some("boom".into()),
                git_branch: Some("main".into()),
                git_commit_sha: Some("abc".into()),
                git_dirty_files: vec!["a.rs".into()],
                created_at: 12,
            }),
            depends_on: vec!["task-x".into(), "task-y".into()],
            continue_from: Some("task-x".into()),
            start_delay: Some(300),
            cascade_root: Some("task-z".into()),
            ..task("task-full", TaskStatus::Failed, 10)
        };
        old_task(&conn, &full);
        // A pipeline that completed and one still running.
        let mut steps = Vec::new();
        for (pipeline, statuses) in [
            (
                "pipeline-done",
                [TaskStatus::Completed, TaskStatus::Completed],
            ),
            ("pipeline-live", [TaskStatus::Running, TaskStatus::Blocked]),
        ] {
            for (i, status) in statuses.into_iter().enumerate() {
                let mut t = task(&format!("task-{pipeline}-{i}"), status, 20 + i as i64);
                t.pipeline_id = Some(pipeline.into());
                t.pipeline_step = Some(i as u32 + 1);
                if status == TaskStatus::Completed {
                    t.completed_at = Some(30 + i as i64);
                }
                old_task(&conn, &t);
                t.owner = Some(EntityRef::new(EntityKind::Pipeline, pipeline));
                steps.push(t);
            }
        }
        // Same millisecond: the rowid order must survive.
        let same = [
            task("task-s2", TaskStatus::Queued, 50),
            task("task-s1", TaskStatus::Queued, 50),
        ];
        for t in &same {
            old_task(&conn, t);
        }
        drop(conn);

        drop(open_write_connection(&path).unwrap());
        let store = Store::new(&path);
        assert_eq!(store.task("task-full").unwrap(), Some(full));
        for t in &steps {
            assert_eq!(store.task(&t.id).unwrap().as_ref(), Some(t));
        }
        let live: Vec<String> = store
            .live_tasks()
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(
            live,
            [
                "task-pipeline-live-0",
                "task-pipeline-live-1",
                "task-s2",
                "task-s1"
            ]
        );
        assert_eq!(store.tasks(&TaskQuery::default()).unwrap().len(), 7);

        let done = store.pipeline("pipeline-done").unwrap().unwrap();
        assert_eq!(done.status, PipelineStatus::Completed);
        assert_eq!(done.completed_at, Some(31));
        assert_eq!(done.steps, ["task-pipeline-done-0", "task-pipeline-done-1"]);
        let running = store.pipeline("pipeline-live").unwrap().unwrap();
        assert_eq!(running.status, PipelineStatus::Running);
        assert_eq!(
            store
                .live_pipelines()
                .unwrap()
                .into_iter()
                .map(|p| p.id)
                .collect::<Vec<_>>(),
            ["pipeline-live"]
        );
        // The new rows are the fold of the new events.
        let mut folded: std::collections::BTreeMap<String, Record> = Default::default();
        for e in store.events().unwrap() {
            assert!(matches!(e.event, Event::Pipeline(_)));
            let next = Record::apply(folded.get(&e.entity_id), &e.event).unwrap();
            folded.insert(e.entity_id, next);
        }
        assert_eq!(folded.get("pipeline-done"), Some(&Record::Pipeline(done)));
        assert_eq!(
            folded.get("pipeline-live"),
            Some(&Record::Pipeline(running))
        );

        // Opening again migrates nothing more.
        drop(open_write_connection(&path).unwrap());
        assert_eq!(store.events().unwrap().len(), 3);
    }
}
