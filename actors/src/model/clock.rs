//! The engine's clock: what time it is on the wall, and who must hear when a test moves it.
//!
//! Owns: the `Clock` trait, `ManualClock` (a clock that tests set and advance, shared by
//! every clone), and `DueQueue`, the ordered set of wall-clock deadlines that lets one
//! timer serve every schedule.
//! Must never: read the machine's clock (`crate::clock_timer::SystemClock` does), sleep,
//! or depend on an async runtime (`crate::clock_timer` does the waiting). Schedules fire
//! at wall-clock times, so a suspend or a change of the system clock must show up in
//! `now()`: a clock is never the monotonic one.
//!
//! How a waiter learns that a `ManualClock` moved without polling it: every change bumps a
//! generation number and wakes the `Waker`s registered for the generation it ended. The
//! real clock never changes that way (its generation stays 0); a waiter on it re-reads the
//! wall clock at least once a second instead.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

use chrono::{DateTime, TimeDelta, Utc};

use super::Millis;

/// Wall-clock time, in UTC.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current wall-clock time.
    fn now(&self) -> DateTime<Utc>;

    /// The current wall-clock time in milliseconds since the Unix epoch (the journal's unit).
    fn now_ms(&self) -> Millis {
        self.now().timestamp_millis()
    }

    /// A number that changes whenever the clock is set by hand. The real clock never is.
    fn generation(&self) -> u64 {
        0
    }

    /// Wakes `waker` once the generation is no longer `seen`, at once if it already is not.
    /// The default (a clock nobody sets) never wakes it: the waiter re-reads the time.
    fn wake_on_change(&self, seen: u64, waker: &Waker) {
        let _ = (seen, waker);
    }
}

/// A clock that only moves when told to. Clones share one time, so a test keeps a clone
/// and advances the engine's clock through it.
#[derive(Debug, Clone)]
pub struct ManualClock {
    inner: Arc<Mutex<ManualState>>,
}

#[derive(Debug)]
struct ManualState {
    now: DateTime<Utc>,
    generation: u64,
    wakers: Vec<Waker>,
}

impl ManualClock {
    /// A clock that reads `start` until it is moved.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(ManualState {
                now: start,
                generation: 0,
                wakers: Vec::new(),
            })),
        }
    }

    /// A clock that reads `start_ms` (milliseconds since the epoch) until it is moved.
    pub fn at_ms(start_ms: Millis) -> Self {
        Self::new(DateTime::from_timestamp_millis(start_ms).unwrap_or_default())
    }

    /// Moves the clock forward by `by` (backward if negative) and wakes every waiter.
    pub fn advance(&self, by: TimeDelta) {
        let mut state = self.lock();
        let now = state.now;
        Self::set_locked(&mut state, now + by);
    }

    /// Moves the clock forward by `ms` milliseconds and wakes every waiter.
    pub fn advance_ms(&self, ms: i64) {
        self.advance(TimeDelta::milliseconds(ms));
    }

    /// Sets the clock to `to`, earlier or later (a change of the system clock), and wakes
    /// every waiter.
    pub fn set(&self, to: DateTime<Utc>) {
        Self::set_locked(&mut self.lock(), to);
    }

    fn set_locked(state: &mut ManualState, to: DateTime<Utc>) {
        state.now = to;
        state.generation += 1;
        for waker in state.wakers.drain(..) {
            waker.wake();
        }
    }

    // A poisoned lock only means a test panicked while holding it; the time is still valid.
    fn lock(&self) -> MutexGuard<'_, ManualState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        self.lock().now
    }

    fn generation(&self) -> u64 {
        self.lock().generation
    }

    fn wake_on_change(&self, seen: u64, waker: &Waker) {
        let mut state = self.lock();
        if state.generation != seen {
            waker.wake_by_ref();
        } else if !state.wakers.iter().any(|w| w.will_wake(waker)) {
            state.wakers.push(waker.clone());
        }
    }
}

/// Wall-clock deadlines of many keys (schedule ids), ordered so that one timer can sleep
/// until the earliest and then take every key that became due. Each key has at most one
/// deadline; setting it again replaces the old one.
#[derive(Debug, Default, Clone)]
pub struct DueQueue {
    by_time: BTreeSet<(Millis, String)>,
    by_key: HashMap<String, Millis>,
}

impl DueQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets (or moves) `key`'s deadline to `at`.
    pub fn set(&mut self, key: &str, at: Millis) {
        self.remove(key);
        self.by_time.insert((at, key.to_string()));
        self.by_key.insert(key.to_string(), at);
    }

    /// Forgets `key`'s deadline; returns it if there was one.
    pub fn remove(&mut self, key: &str) -> Option<Millis> {
        let at = self.by_key.remove(key)?;
        self.by_time.remove(&(at, key.to_string()));
        Some(at)
    }

    /// The deadline of `key`, if it has one.
    pub fn deadline_of(&self, key: &str) -> Option<Millis> {
        self.by_key.get(key).copied()
    }

    /// The earliest deadline, which a timer should sleep until.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.by_time.first().map(|(at, _)| *at)
    }

    /// Removes and returns every key whose deadline is at or before `now`, earliest first.
    pub fn pop_due(&mut self, now: Millis) -> Vec<(String, Millis)> {
        let mut due = Vec::new();
        while let Some((at, _)) = self.by_time.first() {
            if *at > now {
                break;
            }
            let Some((at, key)) = self.by_time.pop_first() else {
                break;
            };
            self.by_key.remove(&key);
            due.push((key, at));
        }
        due
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct CountingWaker(AtomicUsize);
    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn manual_clock_reads_what_it_was_set_to_and_clones_share_it() {
        let clock = ManualClock::new(t("2026-03-08T06:00:00Z"));
        let seen_by_engine = clock.clone();
        clock.advance(TimeDelta::minutes(90));
        assert_eq!(seen_by_engine.now(), t("2026-03-08T07:30:00Z"));
        assert_eq!(
            seen_by_engine.now_ms(),
            t("2026-03-08T07:30:00Z").timestamp_millis()
        );
        clock.set(t("2026-01-01T00:00:00Z"));
        assert_eq!(
            seen_by_engine.now(),
            t("2026-01-01T00:00:00Z"),
            "may go backward"
        );
    }

    #[test]
    fn manual_clock_wakes_registered_waiters_once_per_change() {
        let clock = ManualClock::at_ms(0);
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let seen = clock.generation();
        clock.wake_on_change(seen, &waker);
        clock.wake_on_change(seen, &waker); // the same waker is kept once
        assert_eq!(counter.0.load(Ordering::SeqCst), 0);
        clock.advance_ms(1);
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        clock.advance_ms(1);
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            1,
            "woken wakers are dropped"
        );
    }

    #[test]
    fn registering_after_a_change_wakes_at_once() {
        let clock = ManualClock::at_ms(0);
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let seen = clock.generation();
        clock.advance_ms(5);
        clock.wake_on_change(seen, &Waker::from(counter.clone()));
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn due_queue_pops_due_keys_in_time_order_and_replaces_deadlines() {
        let mut q = DueQueue::new();
        q.set("b", 200);
        q.set("a", 100);
        q.set("c", 300);
        q.set("c", 50); // moved earlier
        assert_eq!(q.next_deadline(), Some(50));
        assert_eq!(q.len(), 3);
        assert_eq!(
            q.pop_due(200),
            vec![("c".to_string(), 50), ("a".into(), 100), ("b".into(), 200)]
        );
        assert!(q.is_empty());
        assert_eq!(q.next_deadline(), None);
        q.set("x", 10);
        assert_eq!(q.remove("x"), Some(10));
        assert_eq!(q.pop_due(i64::MAX), vec![]);
    }
}
