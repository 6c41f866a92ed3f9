//! Pruning: removing finished entities older than the retention, with their events.
//!
//! Owns: which entities may go, one rule per kind (`KINDS`: a kind plugs in with one
//! function), and removing each chosen entity, its state rows and its events in ONE
//! transaction, so the state tables stay the fold of the remaining events.
//! Must never: remove an entity that is running, queued or blocked, or one that an
//! unfinished entity still needs (a finished task that a live task depends on or
//! continues from; a step of an unfinished pipeline); touch run folders (the engine
//! removes them once a removal committed); run on an actor thread (it blocks on fsync).
//! It uses a connection of its own: each transaction is short, and the journal writer
//! waits for it through SQLite's busy timeout.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use rusqlite::{Connection, TransactionBehavior, params};

use super::schema::open_write_connection;
use super::tables::Table;
use crate::model::{EntityKind, EntityRef, Millis, PipelineRecord, TaskRecord};

/// One entity removed, with every entity that went with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pruned {
    /// The entity the rule chose.
    pub entity: EntityRef,
    /// Every entity removed in its transaction, itself first (then a pipeline's steps).
    pub members: Vec<EntityRef>,
}

impl Pruned {
    /// The tasks removed with this entity: their run folders go too.
    pub fn task_ids(&self) -> impl Iterator<Item = &str> {
        self.members
            .iter()
            .filter(|m| m.kind == EntityKind::Task)
            .map(|m| m.id.as_str())
    }
}

/// One kind's rule: the entities of the kind that finished at or before
/// `finished_before` and that nothing unfinished needs, each with the entities that go
/// with it. With `only`, that entity alone if it still qualifies (the recheck inside
/// its transaction).
type Removable = fn(&Connection, Millis, Option<&str>) -> rusqlite::Result<Vec<Pruned>>;

/// Every kind that is pruned. A schedule itself is never pruned while it exists (it is
/// cancelled, not finished by age); its executions are.
const KINDS: &[Removable] = &[
    removable_loops,
    removable_schedule_runs,
    removable_pipelines,
    removable_tasks,
];

/// Statuses of entities that are not finished, as SQL.
const LIVE_TASK: &str = "('blocked', 'queued', 'running')";

/// Finished standalone tasks (a task owned by a pipeline goes with its pipeline) that
/// no unfinished task depends on or continues from (`continueFrom` is among the
/// dependencies, so `task_edges` holds both).
fn removable_tasks(
    conn: &Connection,
    finished_before: Millis,
    only: Option<&str>,
) -> rusqlite::Result<Vec<Pruned>> {
    let sql = format!(
        "SELECT t.id FROM tasks t
         WHERE t.status IN ('completed', 'failed', 'cancelled')
           AND json_extract(t.record, '$.owner') IS NULL
           AND COALESCE(json_extract(t.record, '$.completedAt'), t.created_at) <= ?1
           AND (?2 IS NULL OR t.id = ?2)
           AND NOT EXISTS (SELECT 1 FROM task_edges e JOIN tasks d ON d.id = e.task_id
                           WHERE e.depends_on = t.id AND d.status IN {LIVE_TASK})
         ORDER BY t.created_at, t.rowid"
    );
    conn.prepare_cached(&sql)?
        .query_map(params![finished_before, only], |r| {
            let id: String = r.get(0)?;
            let entity = EntityRef::new(EntityKind::Task, id);
            Ok(Pruned {
                members: vec![entity.clone()],
                entity,
            })
        })?
        .collect()
}

/// Finished loops whose tasks (iterations and evals, owned by the loop) are all
/// finished and needed by no unfinished task; each takes its tasks and its iteration
/// rows with it.
fn removable_loops(
    conn: &Connection,
    finished_before: Millis,
    only: Option<&str>,
) -> rusqlite::Result<Vec<Pruned>> {
    let sql = format!(
        "SELECT l.id FROM loops l
         WHERE l.status IN ('completed', 'failed', 'cancelled')
           AND COALESCE(json_extract(l.record, '$.completedAt'), l.created_at) <= ?1
           AND (?2 IS NULL OR l.id = ?2)
           AND NOT EXISTS (SELECT 1 FROM tasks s
                           WHERE json_extract(s.record, '$.owner.id') = l.id
                             AND s.status IN {LIVE_TASK})
           AND NOT EXISTS (SELECT 1 FROM tasks s
                           JOIN task_edges e ON e.depends_on = s.id
                           JOIN tasks d ON d.id = e.task_id
                           WHERE json_extract(s.record, '$.owner.id') = l.id
                             AND d.status IN {LIVE_TASK})
         ORDER BY l.created_at, l.rowid"
    );
    let ids: Vec<String> = conn
        .prepare_cached(&sql)?
        .query_map(params![finished_before, only], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut owned = conn.prepare_cached(
        "SELECT id FROM tasks WHERE json_extract(record, '$.owner.id') = ?1 ORDER BY rowid",
    )?;
    ids.into_iter()
        .map(|id| {
            let entity = EntityRef::new(EntityKind::Loop, id.clone());
            let mut members = vec![entity.clone()];
            for task in owned.query_map(params![id], |r| r.get::<_, String>(0))? {
                members.push(EntityRef::new(EntityKind::Task, task?));
            }
            Ok(Pruned { entity, members })
        })
        .collect()
}

/// Ended executions of schedules (completed, failed, cancelled, missed, skipped) whose
/// task is finished and needed by no unfinished task; each takes its task with it. The
/// latest run of each schedule stays: `afterSchedule` followers read it.
fn removable_schedule_runs(
    conn: &Connection,
    finished_before: Millis,
    only: Option<&str>,
) -> rusqlite::Result<Vec<Pruned>> {
    let sql = format!(
        "SELECT r.id, r.task_id FROM schedule_runs r
         WHERE r.status IN ('completed', 'failed', 'cancelled', 'missed', 'skipped')
           AND COALESCE(json_extract(r.record, '$.endedAt'), json_extract(r.record, '$.firedAt'),
                        r.scheduled_for) <= ?1
           AND (?2 IS NULL OR r.id = ?2)
           AND r.rowid <> (SELECT MAX(x.rowid) FROM schedule_runs x
                           WHERE x.schedule_id = r.schedule_id
                             AND x.status IN ('triggered', 'completed', 'failed', 'cancelled'))
           AND NOT EXISTS (SELECT 1 FROM tasks s WHERE s.id = r.task_id AND s.status IN {LIVE_TASK})
           AND NOT EXISTS (SELECT 1 FROM task_edges e JOIN tasks d ON d.id = e.task_id
                           WHERE e.depends_on = r.task_id AND d.status IN {LIVE_TASK})
         ORDER BY r.scheduled_for, r.rowid"
    );
    let mut task_exists = conn.prepare_cached("SELECT 1 FROM tasks WHERE id = ?1")?;
    let rows: Vec<(String, Option<String>)> = conn
        .prepare_cached(&sql)?
        .query_map(params![finished_before, only], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    rows.into_iter()
        .map(|(id, task)| {
            let entity = EntityRef::new(EntityKind::ScheduleRun, id);
            let mut members = vec![entity.clone()];
            if let Some(task) = task
                && task_exists.exists(params![task])?
            {
                members.push(EntityRef::new(EntityKind::Task, task));
            }
            Ok(Pruned { entity, members })
        })
        .collect()
}

/// Finished pipelines whose steps are all finished and needed by no unfinished task;
/// each takes its steps with it.
fn removable_pipelines(
    conn: &Connection,
    finished_before: Millis,
    only: Option<&str>,
) -> rusqlite::Result<Vec<Pruned>> {
    let sql = format!(
        "SELECT p.id FROM pipelines p
         WHERE p.status IN ('completed', 'failed', 'cancelled')
           AND COALESCE(json_extract(p.record, '$.completedAt'), p.created_at) <= ?1
           AND (?2 IS NULL OR p.id = ?2)
           AND NOT EXISTS (SELECT 1 FROM tasks s
                           WHERE s.pipeline_id = p.id AND s.status IN {LIVE_TASK})
           AND NOT EXISTS (SELECT 1 FROM tasks s
                           JOIN task_edges e ON e.depends_on = s.id
                           JOIN tasks d ON d.id = e.task_id
                           WHERE s.pipeline_id = p.id AND d.status IN {LIVE_TASK})
         ORDER BY p.created_at, p.rowid"
    );
    let ids: Vec<String> = conn
        .prepare_cached(&sql)?
        .query_map(params![finished_before, only], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut steps =
        conn.prepare_cached("SELECT id FROM tasks WHERE pipeline_id = ?1 ORDER BY rowid")?;
    ids.into_iter()
        .map(|id| {
            let entity = EntityRef::new(EntityKind::Pipeline, id.clone());
            let mut members = vec![entity.clone()];
            for step in steps.query_map(params![id], |r| r.get::<_, String>(0))? {
                members.push(EntityRef::new(EntityKind::Task, step?));
            }
            Ok(Pruned { entity, members })
        })
        .collect()
}

/// Deletes one member's state rows (and any index rows of its kind).
fn delete_rows(conn: &Connection, member: &EntityRef) -> rusqlite::Result<()> {
    match member.kind {
        EntityKind::Task => TaskRecord::remove(conn, &member.id),
        EntityKind::Pipeline => PipelineRecord::remove(conn, &member.id),
        EntityKind::Loop => crate::model::loops::LoopRecord::remove(conn, &member.id),
        EntityKind::Schedule => crate::model::schedule::ScheduleRecord::remove(conn, &member.id),
        EntityKind::ScheduleRun => {
            crate::model::schedule::ExecutionRecord::remove(conn, &member.id)
        }
    }
}

/// Removes every entity that finished at or before `finished_before` and that nothing
/// unfinished needs, each in one transaction with its rows and events; calls `removed`
/// after each commit (the engine removes run folders there). Returns what was removed.
/// Blocking.
pub fn prune(
    db: &Path,
    finished_before: Millis,
    mut removed: impl FnMut(&Pruned),
) -> rusqlite::Result<Vec<Pruned>> {
    let mut conn = open_write_connection(db)?;
    let mut chosen = Vec::new();
    for rule in KINDS {
        chosen.extend(rule(&conn, finished_before, None)?);
    }
    if chosen.is_empty() {
        return Ok(chosen);
    }
    // One scan finds every chosen entity's events (no index on entity ids slows the
    // writer's inserts). A finished task may still get an event (a checkpoint journaled
    // on its own): each transaction also looks at the events newer than the scan.
    let mut scanned_to = 0i64;
    let wanted: HashSet<(EntityKind, &str)> = chosen
        .iter()
        .flat_map(|p| p.members.iter().map(|m| (m.kind, m.id.as_str())))
        .collect();
    let mut events: HashMap<(EntityKind, String), Vec<i64>> = HashMap::new();
    {
        let mut stmt = conn.prepare("SELECT seq, entity_kind, entity_id FROM events")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let Some(kind) = EntityKind::parse(row.get_ref(1)?.as_str()?) else {
                continue;
            };
            let seq: i64 = row.get(0)?;
            scanned_to = scanned_to.max(seq);
            let id = row.get_ref(2)?.as_str()?;
            if wanted.contains(&(kind, id)) {
                events.entry((kind, id.to_string())).or_default().push(seq);
            }
        }
    }
    let mut done = Vec::with_capacity(chosen.len());
    for pruned in chosen {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let rule = match pruned.entity.kind {
            EntityKind::Pipeline => removable_pipelines,
            EntityKind::Task => removable_tasks,
            EntityKind::Loop => removable_loops,
            EntityKind::ScheduleRun => removable_schedule_runs,
            // No rule chooses schedules (KINDS): they are kept.
            EntityKind::Schedule => continue,
        };
        // Something may have started to need it since the listing: check again.
        let Some(now) = rule(&tx, finished_before, Some(&pruned.entity.id))?
            .into_iter()
            .next()
        else {
            continue;
        };
        {
            let mut delete = tx.prepare_cached("DELETE FROM events WHERE seq = ?1")?;
            let mut delete_newer = tx.prepare_cached(
                "DELETE FROM events WHERE seq > ?1 AND entity_kind = ?2 AND entity_id = ?3",
            )?;
            for member in &now.members {
                for seq in events
                    .get(&(member.kind, member.id.clone()))
                    .into_iter()
                    .flatten()
                {
                    delete.execute(params![seq])?;
                }
                delete_newer.execute(params![scanned_to, member.kind.as_str(), member.id])?;
                delete_rows(&tx, member)?;
            }
        }
        tx.commit()?;
        removed(&now);
        done.push(now);
    }
    Ok(done)
}
