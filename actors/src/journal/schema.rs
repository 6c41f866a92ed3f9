//! Connection settings and versioned migrations.

use std::path::Path;

use rusqlite::Connection;

/// Migrations in order; migration N is `MIGRATIONS[N - 1]`. Never edit a released one:
/// add the next.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "events and tasks",
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
    ),
    (
        "agent settings, results, usage, rate limits and checkpoints of tasks",
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
    ),
    (
        "dependencies, continuations and pipelines",
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
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY,
            applied_at INTEGER NOT NULL,
            description TEXT NOT NULL
        )",
    )?;
    let current: i64 = conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )?;
    for (index, (description, sql)) in MIGRATIONS.iter().enumerate() {
        let version = index as i64 + 1;
        if version <= current {
            continue;
        }
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations(version, applied_at, description) VALUES (?1, ?2, ?3)",
            rusqlite::params![version, crate::model::now_ms(), description],
        )?;
        tx.commit()?;
    }
    Ok(conn)
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
