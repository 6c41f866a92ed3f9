//! The journal under test, shared by the fold property tests: the real `JournalWriter`
//! on a SQLite file, appends left queued until `settle`, and restarts that drop the
//! writer (it must still commit what it was given) and reopen the same file.

// Each test binary uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use backbeat_actors::journal::{Append, JournalError, JournalWriter, open_write_connection};
use backbeat_actors::model::Transition;
use tokio::sync::oneshot;

type Reply = oneshot::Receiver<Result<(), JournalError>>;

pub fn start_writer(path: &Path) -> JournalWriter {
    let conn = open_write_connection(path).expect("opening the journal for writing");
    JournalWriter::start(conn, path)
}

pub struct Journal {
    path: PathBuf,
    writer: Option<JournalWriter>,
    pending: Vec<Reply>,
    pub most_pending: usize,
}

impl Journal {
    pub fn open(path: &Path) -> Journal {
        Journal {
            path: path.to_path_buf(),
            writer: Some(start_writer(path)),
            pending: Vec::new(),
            most_pending: 0,
        }
    }

    pub fn append(&mut self, transitions: Vec<Transition>) {
        let writer = self.writer.as_ref().expect("the writer is running");
        self.pending.push(writer.append(Append::new(transitions)));
        self.most_pending = self.most_pending.max(self.pending.len());
    }

    /// Waits until every queued append has committed; each must succeed.
    pub fn settle(&mut self) {
        for reply in self.pending.drain(..) {
            reply
                .blocking_recv()
                .expect("the writer dropped an append without replying")
                .expect("an append failed");
        }
    }

    /// A daemon restart: the writer goes away (it must still commit what it was given),
    /// then the same file is reopened and migrated again.
    pub fn restart(&mut self) {
        drop(self.writer.take());
        self.settle();
        self.writer = Some(start_writer(&self.path));
    }
}
