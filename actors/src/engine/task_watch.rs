//! `TaskWatch`: waiting for one task's committed changes.
//!
//! Owns: one subscription to the journal's committed records, and the waiters by task
//! id. Each commit of a task is handed to that task's waiters alone. Why: a waiter with
//! its own subscription receives (and so clones) every record committed while it waits;
//! with 64 WaitTask calls in flight, each commit was cloned 64 times, most of them for
//! nobody.
//! Must never: hold its lock across an await, or lose a commit a waiter registered for
//! (when the subscription lags, every waiter is told to read the task again).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{broadcast, mpsc};

use crate::model::{Record, TaskRecord};

/// What a waiter hears.
#[derive(Debug)]
pub enum TaskUpdate {
    /// The task as just committed.
    Committed(Box<TaskRecord>),
    /// Commits may have been missed: read the task again.
    Lagged,
    /// The journal is closing (the daemon stops).
    Closed,
}

type Waiters = HashMap<String, Vec<mpsc::UnboundedSender<TaskUpdate>>>;

/// Cheap to clone: every clone shares the waiters.
#[derive(Clone, Default)]
pub struct TaskWatch {
    waiters: Arc<Mutex<Waiters>>,
}

/// A registration: commits of the task come out of `next` until it is dropped (which
/// removes it: a wait on a task that never commits again leaves nothing behind).
pub struct Watching {
    updates: mpsc::UnboundedReceiver<TaskUpdate>,
    task_id: String,
    watch: TaskWatch,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.updates.close();
        let mut waiters = self.watch.lock();
        if let Some(list) = waiters.get_mut(&self.task_id) {
            list.retain(|w| !w.is_closed());
            if list.is_empty() {
                waiters.remove(&self.task_id);
            }
        }
    }
}

impl Watching {
    /// The next update; `Closed` once the watch is gone.
    pub async fn next(&mut self) -> TaskUpdate {
        self.updates.recv().await.unwrap_or(TaskUpdate::Closed)
    }
}

impl TaskWatch {
    /// Starts forwarding `committed` to the waiters (on the current tokio runtime).
    pub fn start(mut committed: broadcast::Receiver<Record>) -> TaskWatch {
        let watch = TaskWatch::default();
        let forward = watch.clone();
        tokio::spawn(async move {
            loop {
                match committed.recv().await {
                    Ok(Record::Task(task)) => forward.deliver(task),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        forward.tell_all(|| TaskUpdate::Lagged)
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        forward.tell_all(|| TaskUpdate::Closed);
                        forward.lock().clear();
                        return;
                    }
                }
            }
        });
        watch
    }

    /// Registers for the commits of `task_id` from now on. Register before reading the
    /// task, so that no commit falls between the read and the registration.
    pub fn watch(&self, task_id: &str) -> Watching {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().entry(task_id.to_string()).or_default().push(tx);
        Watching {
            updates: rx,
            task_id: task_id.to_string(),
            watch: self.clone(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Waiters> {
        // A panic elsewhere while the lock was held leaves a map that is still valid.
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn deliver(&self, task: TaskRecord) {
        let mut waiters = self.lock();
        let Some(list) = waiters.get_mut(&task.id) else {
            return;
        };
        list.retain(|w| !w.is_closed()); // dropped registrations
        let Some((last, others)) = list.split_last() else {
            waiters.remove(&task.id);
            return;
        };
        for w in others {
            let _ = w.send(TaskUpdate::Committed(Box::new(task.clone())));
        }
        let _ = last.send(TaskUpdate::Committed(Box::new(task)));
    }

    fn tell_all(&self, update: impl Fn() -> TaskUpdate) {
        let mut waiters = self.lock();
        waiters.retain(|_, list| {
            list.retain(|w| w.send(update()).is_ok());
            !list.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::task::tests_support::queued;

    #[tokio::test]
    async fn a_commit_reaches_the_waiters_of_its_task_only() {
        let (tx, rx) = broadcast::channel(16);
        let watch = TaskWatch::start(rx);
        let mut a = watch.watch("task-a");
        let mut a_again = watch.watch("task-a");
        let mut b = watch.watch("task-b");
        tx.send(Record::Task(queued("task-a"))).unwrap();
        for w in [&mut a, &mut a_again] {
            match w.next().await {
                TaskUpdate::Committed(t) => assert_eq!(t.id, "task-a"),
                other => panic!("expected task-a's commit, got {other:?}"),
            }
        }
        tx.send(Record::Task(queued("task-b"))).unwrap();
        match b.next().await {
            TaskUpdate::Committed(t) => assert_eq!(t.id, "task-b"),
            other => panic!("expected task-b's commit, got {other:?}"),
        }
        // task-a's waiters heard nothing of task-b.
        assert!(a.updates.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_dropped_registration_leaves_nothing_and_a_closed_journal_is_told() {
        let (tx, rx) = broadcast::channel(16);
        let watch = TaskWatch::start(rx);
        let mut kept = watch.watch("task-b");
        let dropped = watch.watch("task-a");
        assert!(watch.lock().contains_key("task-a"));
        drop(dropped);
        assert!(!watch.lock().contains_key("task-a"));
        tx.send(Record::Task(queued("task-b"))).unwrap();
        assert!(matches!(kept.next().await, TaskUpdate::Committed(_)));
        drop(tx);
        assert!(matches!(kept.next().await, TaskUpdate::Closed));
    }
}
