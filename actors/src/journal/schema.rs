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
