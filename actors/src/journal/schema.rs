//! Connection settings and versioned migrations.
//!
//! Owns: the schema's history. Must never: edit a released migration (add the next), or
//! leave a database half-migrated (each migration is one transaction).

use std::path::Path;

use rusqlite::{Connection, Transaction};

/// One step of a migration.
enum Step {
    Sql(&'static str),
    /// Work SQL cannot say well (building records with the model).
    Code(fn(&Transaction<'_>) -> rusqlite::Result<()>),
}

/// Migrations in order; migration N is `MIGRATIONS[N - 1]`. Never edit a released one:
/// add the next.
const MIGRATIONS: &[(&str, &[Step])] = &[
    (
        "events and tasks",
        &[Step::Sql(
            r#"
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY, -- the rowid: grows with every append (events are never
                                 -- deleted from the end), without AUTOINCREMENT's extra table
        at INTEGER NOT NULL,
        entity_kind TEXT NOT NULL,
        entity_id TEXT NOT NULL,
        transition TEXT NOT NULL,
        payload TEXT NOT NULL
    );
    CREATE TABLE tasks (
        id TEXT PRIMARY KEY,
        prompt TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('blocked','queued','running','completed','failed','cancelled')),
        priority TEXT NOT NULL CHECK (priority IN ('P0','P1','P2')),
        agent TEXT NOT NULL,
        working_directory TEXT NOT NULL,
        timeout INTEGER NOT NULL,
        idle_timeout INTEGER,
        max_output_buffer INTEGER NOT NULL,
        parent_task_id TEXT,
        retry_count INTEGER,
        retry_of TEXT,
        created_at INTEGER NOT NULL,
        started_at INTEGER,
        completed_at INTEGER,
        not_before INTEGER,
        exit_code INTEGER,
        signal TEXT,
        reason TEXT,
        shim_pid INTEGER,
        shim_start_time INTEGER,
        cancel_reason TEXT,
        output_bytes INTEGER,
        output_truncated INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX tasks_by_status ON tasks(status, created_at);
    CREATE INDEX tasks_by_created ON tasks(created_at);
    "#,
        )],
    ),
    (
        "agent settings, results, usage, rate limits and checkpoints of tasks",
        &[Step::Sql(
            r#"
    ALTER TABLE tasks ADD COLUMN model TEXT;
    ALTER TABLE tasks ADD COLUMN system_prompt TEXT;
    ALTER TABLE tasks ADD COLUMN session_id TEXT;
    ALTER TABLE tasks ADD COLUMN resume_session TEXT;
    ALTER TABLE tasks ADD COLUMN result TEXT;
    ALTER TABLE tasks ADD COLUMN usage TEXT;
    ALTER TABLE tasks ADD COLUMN rate_limit_retries INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE tasks ADD COLUMN checkpoint TEXT;
    "#,
        )],
    ),
    (
        "dependencies, continuations and pipelines",
        &[Step::Sql(
            r#"
    ALTER TABLE tasks ADD COLUMN depends_on TEXT;
    ALTER TABLE tasks ADD COLUMN continue_from TEXT;
    ALTER TABLE tasks ADD COLUMN pipeline_id TEXT;
    ALTER TABLE tasks ADD COLUMN pipeline_step INTEGER;
    ALTER TABLE tasks ADD COLUMN start_delay INTEGER;
    ALTER TABLE tasks ADD COLUMN cascade_root TEXT;
    CREATE INDEX tasks_by_pipeline ON tasks(pipeline_id, pipeline_step);
    -- An index of tasks.depends_on, written with the task: who depends on whom.
    CREATE TABLE task_edges (
        task_id TEXT NOT NULL,
        depends_on TEXT NOT NULL,
        PRIMARY KEY (depends_on, task_id)
    ) WITHOUT ROWID;
    "#,
        )],
    ),
    (
        "one journal for every kind: records as JSON beside indexed columns; pipelines",
        &[
            Step::Sql(
                r#"
    CREATE TABLE pipelines (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL CHECK (status IN ('running','completed','failed','cancelled')),
        created_at INTEGER NOT NULL,
        record TEXT NOT NULL
    );
    CREATE INDEX pipelines_by_status ON pipelines(status);
    "#,
            ),
            Step::Code(super::migrate::pipelines_from_steps),
            Step::Sql(
                r#"
    CREATE TABLE task_rows (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL CHECK (status IN ('blocked','queued','running','completed','failed','cancelled')),
        created_at INTEGER NOT NULL,
        pipeline_id TEXT,
        record TEXT NOT NULL
    );
    -- The rowids are kept: tasks created in the same millisecond keep their order.
    INSERT INTO task_rows(rowid, id, status, created_at, pipeline_id, record)
    SELECT rowid, id, status, created_at, pipeline_id, json_object(
        'id', id, 'prompt', prompt, 'status', status, 'priority', priority,
        'agent', agent, 'workingDirectory', working_directory, 'timeout', timeout,
        'idleTimeout', idle_timeout, 'maxOutputBuffer', max_output_buffer,
        'parentTaskId', parent_task_id, 'retryCount', retry_count, 'retryOf', retry_of,
        'createdAt', created_at, 'startedAt', started_at, 'completedAt', completed_at,
        'notBefore', not_before, 'exitCode', exit_code, 'signal', signal,
        'reason', reason, 'shimPid', shim_pid, 'shimStartTime', shim_start_time,
        'cancelReason', cancel_reason, 'outputBytes', output_bytes,
        'outputTruncated', json(CASE WHEN output_truncated THEN 'true' ELSE 'false' END),
        'model', model, 'systemPrompt', system_prompt, 'sessionId', session_id,
        'resumeSession', resume_session, 'result', result, 'usage', json(usage),
        'rateLimitRetries', rate_limit_retries, 'checkpoint', json(checkpoint),
        'dependsOn', COALESCE(json(depends_on), json('[]')),
        'continueFrom', continue_from, 'pipelineId', pipeline_id,
        'pipelineStep', pipeline_step, 'startDelay', start_delay,
        'cascadeRoot', cascade_root,
        'owner', CASE WHEN pipeline_id IS NULL THEN NULL
                      ELSE json_object('kind', 'pipeline', 'id', pipeline_id) END)
    FROM tasks ORDER BY rowid;
    DROP TABLE tasks;
    ALTER TABLE task_rows RENAME TO tasks;
    CREATE INDEX tasks_by_status ON tasks(status, created_at);
    CREATE INDEX tasks_by_created ON tasks(created_at);
    CREATE INDEX tasks_by_pipeline ON tasks(pipeline_id) WHERE pipeline_id IS NOT NULL;
    "#,
            ),
        ],
    ),
    (
        "event sequence numbers never reused: pruning may delete the newest events",
        // A plain INTEGER PRIMARY KEY gives the next insert MAX(seq) + 1, so deleting the
        // newest rows would hand their numbers out again; AUTOINCREMENT keeps the high
        // water mark in sqlite_sequence (set here by the copy).
        &[Step::Sql(
            r#"
    CREATE TABLE events_autoincrement (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        entity_kind TEXT NOT NULL,
        entity_id TEXT NOT NULL,
        transition TEXT NOT NULL,
        payload TEXT NOT NULL
    );
    INSERT INTO events_autoincrement(seq, at, entity_kind, entity_id, transition, payload)
    SELECT seq, at, entity_kind, entity_id, transition, payload FROM events ORDER BY seq;
    DROP TABLE events;
    ALTER TABLE events_autoincrement RENAME TO events;
    "#,
        )],
    ),
    (
        "eval loops and their iterations",
        &[Step::Sql(
            r#"
    CREATE TABLE loops (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL CHECK (status IN ('running','paused','completed','failed','cancelled')),
        created_at INTEGER NOT NULL,
        record TEXT NOT NULL
    );
    CREATE INDEX loops_by_status ON loops(status, created_at);
    CREATE TABLE loop_iterations (
        loop_id TEXT NOT NULL,
        iteration_number INTEGER NOT NULL,
        status TEXT NOT NULL,
        record TEXT NOT NULL,
        PRIMARY KEY (loop_id, iteration_number)
    );
    "#,
        )],
    ),
    (
        "schedules and their executions",
        &[Step::Sql(
            r#"
    CREATE TABLE schedules (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL CHECK (status IN ('active','paused','completed','cancelled','expired')),
        live INTEGER NOT NULL, -- active, paused, or following a run that has not ended
        created_at INTEGER NOT NULL,
        next_run_at INTEGER,
        record TEXT NOT NULL
    );
    CREATE INDEX schedules_live ON schedules(live) WHERE live;
    CREATE INDEX schedules_by_created ON schedules(created_at);
    CREATE TABLE schedule_runs (
        id TEXT PRIMARY KEY,
        schedule_id TEXT NOT NULL,
        scheduled_for INTEGER NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('triggered','completed','failed','cancelled','missed','skipped')),
        task_id TEXT,
        pipeline_id TEXT,
        record TEXT NOT NULL
    );
    CREATE INDEX schedule_runs_by_schedule ON schedule_runs(schedule_id, scheduled_for);
    CREATE INDEX schedule_runs_by_task ON schedule_runs(task_id) WHERE task_id IS NOT NULL;
    CREATE INDEX schedule_runs_by_pipeline ON schedule_runs(pipeline_id) WHERE pipeline_id IS NOT NULL;
    "#,
        )],
    ),
    (
        "status checks without IN lists: each write of a state row built a temporary B-tree",
        // SQLite evaluates `CHECK (status IN ('a', 'b', 'c'))` by filling an ephemeral
        // table with the list on every INSERT and UPDATE (open, insert, close: about a
        // tenth of the journal writer's time). The same rule as a chain of `=` tests
        // costs a few comparisons. A constraint cannot be altered in place, so each
        // table is copied (rowids kept: listings break ties by rowid) and its indexes
        // made again, exactly as before.
        &[Step::Sql(
            r#"
    CREATE TABLE tasks_new (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL CHECK (status = 'blocked' OR status = 'queued' OR status = 'running'
            OR status = 'completed' OR status = 'failed' OR status = 'cancelled'),
        created_at INTEGER NOT NULL,
        pipeline_id TEXT,
        record TEXT NOT NULL
    );
    INSERT INTO tasks_new(rowid, id, status, created_at, pipeline_id, record)
    SELECT rowid, id, status, created_at, pipeline_id, record FROM tasks ORDER BY rowid;
    DROP TABLE tasks;
    ALTER TABLE tasks_new RENAME TO tasks;
    CREATE INDEX tasks_by_status ON tasks(status, created_at);
    CREATE INDEX tasks_by_created ON tasks(created_at);
    CREATE INDEX tasks_by_pipeline ON tasks(pipeline_id) WHERE pipeline_id IS NOT NULL;

    CREATE TABLE pipelines_new (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL CHECK (status = 'running' OR status = 'completed'
            OR status = 'failed' OR status = 'cancelled'),
        created_at INTEGER NOT NULL,
        record TEXT NOT NULL
    );
    INSERT INTO pipelines_new(rowid, id, status, created_at, record)
    SELECT rowid, id, status, created_at, record FROM pipelines ORDER BY rowid;
    DROP TABLE pipelines;
    ALTER TABLE pipelines_new RENAME TO pipelines;
    CREATE INDEX pipelines_by_status ON pipelines(status);

    CREATE TABLE loops_new (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL CHECK (status = 'running' OR status = 'paused'
            OR status = 'completed' OR status = 'failed' OR status = 'cancelled'),
        created_at INTEGER NOT NULL,
        record TEXT NOT NULL
    );
    INSERT INTO loops_new(rowid, id, status, created_at, record)
    SELECT rowid, id, status, created_at, record FROM loops ORDER BY rowid;
    DROP TABLE loops;
    ALTER TABLE loops_new RENAME TO loops;
    CREATE INDEX loops_by_status ON loops(status, created_at);

    CREATE TABLE schedules_new (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL CHECK (status = 'active' OR status = 'paused'
            OR status = 'completed' OR status = 'cancelled' OR status = 'expired'),
        live INTEGER NOT NULL, -- active, paused, or following a run that has not ended
        created_at INTEGER NOT NULL,
        next_run_at INTEGER,
        record TEXT NOT NULL
    );
    INSERT INTO schedules_new(rowid, id, status, live, created_at, next_run_at, record)
    SELECT rowid, id, status, live, created_at, next_run_at, record FROM schedules ORDER BY rowid;
    DROP TABLE schedules;
    ALTER TABLE schedules_new RENAME TO schedules;
    CREATE INDEX schedules_live ON schedules(live) WHERE live;
    CREATE INDEX schedules_by_created ON schedules(created_at);

    CREATE TABLE schedule_runs_new (
        id TEXT PRIMARY KEY,
        schedule_id TEXT NOT NULL,
        scheduled_for INTEGER NOT NULL,
        status TEXT NOT NULL CHECK (status = 'triggered' OR status = 'completed'
            OR status = 'failed' OR status = 'cancelled' OR status = 'missed'
            OR status = 'skipped'),
        task_id TEXT,
        pipeline_id TEXT,
        record TEXT NOT NULL
    );
    INSERT INTO schedule_runs_new(rowid, id, schedule_id, scheduled_for, status, task_id,
        pipeline_id, record)
    SELECT rowid, id, schedule_id, scheduled_for, status, task_id, pipeline_id, record
    FROM schedule_runs ORDER BY rowid;
    DROP TABLE schedule_runs;
    ALTER TABLE schedule_runs_new RENAME TO schedule_runs;
    CREATE INDEX schedule_runs_by_schedule ON schedule_runs(schedule_id, scheduled_for);
    CREATE INDEX schedule_runs_by_task ON schedule_runs(task_id) WHERE task_id IS NOT NULL;
    CREATE INDEX schedule_runs_by_pipeline ON schedule_runs(pipeline_id) WHERE pipeline_id IS NOT NULL;
    "#,
        )],
    ),
];

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// Opens the database for writing: WAL, `synchronous=FULL`, and every pending
/// migration applied, each in its own transaction.
pub fn open_write_connection(path: &Path) -> rusqlite::Result<Connection> {
    let mut conn = Connection::open(path)?;
    configure(&conn)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(
            mode,
            "SQLite refused WAL mode; durability holds but readers may wait"
        );
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    create_migrations_table(&conn)?;
    let current: i64 = conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )?;
    if current > MIGRATIONS.len() as i64 {
        return Err(rusqlite::Error::ToSqlConversionFailure(
            format!(
                "{} was written by a newer Backbeat (schema version {current}; this one knows {}). Upgrade beat",
                path.display(),
                MIGRATIONS.len()
            )
            .into(),
        ));
    }
    migrate(&mut conn, current, MIGRATIONS.len())?;
    Ok(conn)
}

fn create_migrations_table(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY,
            applied_at INTEGER NOT NULL,
            description TEXT NOT NULL
        )",
    )
}

/// A database at schema `version` exactly (tests of later migrations start there).
#[cfg(test)]
pub(super) fn migrate_to(conn: &mut Connection, version: usize) -> rusqlite::Result<()> {
    create_migrations_table(conn)?;
    migrate(conn, 0, version)
}

/// Applies migrations `current + 1 ..= target`, each in its own transaction.
fn migrate(conn: &mut Connection, current: i64, target: usize) -> rusqlite::Result<()> {
    for (index, (description, steps)) in MIGRATIONS.iter().enumerate().take(target) {
        let version = index as i64 + 1;
        if version <= current {
            continue;
        }
        let tx = conn.transaction()?;
        for step in *steps {
            match step {
                Step::Sql(sql) => tx.execute_batch(sql)?,
                Step::Code(f) => f(&tx)?,
            }
        }
        tx.execute(
            "INSERT INTO schema_migrations(version, applied_at, description) VALUES (?1, ?2, ?3)",
            rusqlite::params![version, crate::model::now_ms(), description],
        )?;
        tx.commit()?;
    }
    Ok(())
}

/// Opens a read-only connection (WAL lets it read beside the writer).
pub fn open_read_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    configure(&conn)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    //! Schema 8 (status checks without IN lists) on a database that schema 7 made.

    use rusqlite::{Connection, params};

    use super::{migrate_to, open_write_connection};

    const TABLES: [&str; 5] = ["tasks", "pipelines", "loops", "schedules", "schedule_runs"];

    /// A table's rows and its indexes' names and SQL.
    type TableState = (Vec<String>, Vec<(String, Option<String>)>);

    /// Every row of `table` with its rowid, each value as text, in rowid order.
    fn rows(conn: &Connection, table: &str) -> Vec<String> {
        let mut stmt = conn
            .prepare(&format!("SELECT rowid, * FROM {table} ORDER BY rowid"))
            .unwrap();
        let columns = stmt.column_count();
        stmt.query_map([], |r| {
            (0..columns)
                .map(|i| Ok(format!("{:?}", r.get_ref(i)?)))
                .collect::<rusqlite::Result<Vec<_>>>()
                .map(|values| values.join(" | "))
        })
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
    }

    /// The indexes of `table` as declared.
    fn indexes(conn: &Connection, table: &str) -> Vec<(String, Option<String>)> {
        let mut stmt = conn
            .prepare(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1
                 ORDER BY name",
            )
            .unwrap();
        stmt.query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[test]
    fn a_schema_7_database_keeps_its_rows_rowids_and_indexes_and_no_write_builds_a_temp_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("beat.db");
        let mut conn = Connection::open(&path).unwrap();
        migrate_to(&mut conn, 7).unwrap();
        // Rowids out of insertion order, so that a copy that renumbered would show.
        for (rowid, id, status, created) in
            [(7, "task-b", "running", 20), (3, "task-a", "queued", 10)]
        {
            conn.execute(
                "INSERT INTO tasks(rowid, id, status, created_at, pipeline_id, record)
                 VALUES (?1, ?2, ?3, ?4, 'pipeline-1', ?5)",
                params![rowid, id, status, created, format!(r#"{{"id":"{id}"}}"#)],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO pipelines(rowid, id, status, created_at, record)
             VALUES (5, 'pipeline-1', 'running', 10, '{\"id\":\"pipeline-1\"}')",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO loops(rowid, id, status, created_at, record)
             VALUES (2, 'loop-1', 'paused', 11, '{\"id\":\"loop-1\"}')",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO schedules(rowid, id, status, live, created_at, next_run_at, record)
             VALUES (4, 'schedule-1', 'active', 1, 12, 99, '{\"id\":\"schedule-1\"}')",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO schedule_runs(rowid, id, schedule_id, scheduled_for, status, task_id,
             pipeline_id, record)
             VALUES (9, 'run-1', 'schedule-1', 98, 'skipped', 'task-a', NULL, '{\"id\":\"run-1\"}')",
            [],
        )
        .unwrap();
        let before: Vec<TableState> = TABLES
            .iter()
            .map(|t| (rows(&conn, t), indexes(&conn, t)))
            .collect();
        let ephemeral = |conn: &Connection| {
            let mut stmt = conn
                .prepare("EXPLAIN UPDATE tasks SET status = ?2, record = ?3 WHERE id = ?1")
                .unwrap();
            stmt.query_map(["task-a", "queued", "{}"], |r| r.get::<_, String>(1))
                .unwrap()
                .filter_map(Result::ok)
                .any(|op| op == "OpenEphemeral")
        };
        assert!(ephemeral(&conn), "schema 7 checks status with an IN list");
        drop(conn);

        let conn = open_write_connection(&path).unwrap();
        let after: Vec<TableState> = TABLES
            .iter()
            .map(|t| (rows(&conn, t), indexes(&conn, t)))
            .collect();
        assert_eq!(after, before);
        assert_eq!(rows(&conn, "tasks").len(), 2);
        assert!(!ephemeral(&conn), "a state write builds a temporary B-tree");
        // The rule itself holds as before.
        let bad = conn.execute(
            "UPDATE tasks SET status = 'finished' WHERE id = 'task-a'",
            [],
        );
        assert!(bad.is_err(), "an unknown status was accepted");
        conn.execute(
            "UPDATE tasks SET status = 'cancelled' WHERE id = 'task-a'",
            [],
        )
        .unwrap();
    }
}
