//! The machine's wall clock, and sleeping until a wall-clock instant on any `Clock`.
//!
//! Owns: `SystemClock`, and `sleep_until`, the one way the engine waits for a wall-clock
//! time (a schedule's next fire, a cooldown's end).
//! Must never: trust a monotonic timer for a wall-clock deadline. A tokio timer is
//! monotonic: it does not count a laptop's suspend and does not move when the system clock
//! is changed. So the waiter sleeps at most `RECHECK` at a time and re-reads the clock,
//! which notices either within a second (issue 9, point 4); a `ManualClock` moved by a
//! test wakes it at once, so tests of days and DST edges take no real time.
//!
//! Cost: one wake-up per second per waiter while it waits. The engine should keep one
//! waiter for all schedules (on `model::clock::DueQueue`'s earliest deadline), not one each.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::model::Millis;
use crate::model::clock::Clock;

/// The machine's wall clock (UTC).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// TEST ONLY: a clock read from a file, so that integration tests through the real
/// binary can move the daemon's time (`BACKBEAT_TEST_CLOCK_FILE`). The file holds one
/// integer, milliseconds since the epoch, and is read again at every `now()`; the shared
/// timer re-reads the time at least once a second, so a test that writes a later time
/// sees what became due fire within a second. A missing or unreadable file reads as the
/// machine's clock. Never set this variable outside tests.
#[derive(Debug, Clone)]
pub struct FileClock {
    pub path: std::path::PathBuf,
}

impl Clock for FileClock {
    fn now(&self) -> DateTime<Utc> {
        std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|t| t.trim().parse::<i64>().ok())
            .and_then(DateTime::from_timestamp_millis)
            .unwrap_or_else(Utc::now)
    }
}

/// The daemon's clock: the machine's, or (tests only) `BACKBEAT_TEST_CLOCK_FILE`'s.
pub fn daemon_clock() -> std::sync::Arc<dyn Clock> {
    match std::env::var_os("BACKBEAT_TEST_CLOCK_FILE") {
        Some(path) if !path.is_empty() => std::sync::Arc::new(FileClock { path: path.into() }),
        _ => std::sync::Arc::new(SystemClock),
    }
}

/// The longest the waiter trusts the monotonic timer before reading the wall clock again.
pub const RECHECK: Duration = Duration::from_secs(1);

/// Returns once `clock.now() >= deadline`: within `RECHECK` of it on the real clock
/// (whatever the clock did meanwhile), at once when a `ManualClock` is moved past it.
pub async fn sleep_until<C: Clock + ?Sized>(clock: &C, deadline: DateTime<Utc>) {
    loop {
        // Read the generation before the time: a change between the two wakes us at once.
        let seen = clock.generation();
        let now = clock.now();
        if now >= deadline {
            return;
        }
        let remaining = (deadline - now).to_std().unwrap_or_default().min(RECHECK);
        tokio::select! {
            _ = tokio::time::sleep(remaining) => {}
            _ = ClockChanged { clock, seen } => {}
        }
    }
}

/// `sleep_until` for a deadline in milliseconds since the epoch (the journal's unit).
pub async fn sleep_until_ms<C: Clock + ?Sized>(clock: &C, deadline: Millis) {
    let deadline = DateTime::from_timestamp_millis(deadline).unwrap_or(DateTime::<Utc>::MAX_UTC);
    sleep_until(clock, deadline).await
}

/// Ready once the clock's generation differs from `seen` (never, on the real clock).
struct ClockChanged<'a, C: ?Sized> {
    clock: &'a C,
    seen: u64,
}

impl<C: Clock + ?Sized> Future for ClockChanged<'_, C> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.clock.generation() != self.seen {
            return Poll::Ready(());
        }
        self.clock.wake_on_change(self.seen, cx.waker());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::clock::ManualClock;
    use chrono::TimeDelta;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn manual_clock_wakes_the_waiter_when_moved_past_the_deadline() {
        let clock = ManualClock::new(t("2026-03-08T06:00:00Z"));
        let waiter = {
            let clock = clock.clone();
            tokio::spawn(async move { sleep_until(&clock, t("2026-03-08T07:00:00Z")).await })
        };
        clock.advance(TimeDelta::minutes(59));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished(), "woke before its deadline");
        clock.advance(TimeDelta::minutes(2));
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter did not wake when the clock passed its deadline")
            .unwrap();
    }

    #[test]
    fn system_clock_is_the_wall_clock_and_never_changes_generation() {
        let before = Utc::now();
        let now = SystemClock.now();
        assert!(now >= before && now <= Utc::now());
        assert_eq!(SystemClock.generation(), 0);
    }

    #[tokio::test]
    async fn a_deadline_already_past_returns_at_once() {
        let clock = ManualClock::at_ms(10_000);
        tokio::time::timeout(Duration::from_secs(5), sleep_until_ms(&clock, 9_000))
            .await
            .expect("should not wait");
        tokio::time::timeout(Duration::from_secs(5), sleep_until_ms(&SystemClock, 0))
            .await
            .expect("should not wait");
    }

    /// The shape of a `ScheduleActor`, as a loop over the pure model: decide, sleep until
    /// the instant it names, fire. A `ManualClock` moved to each fire time wakes it at
    /// once, so a schedule crosses New York's 2026 spring-forward day in no real time.
    #[tokio::test]
    async fn a_schedule_loop_on_a_manual_clock_fires_when_the_clock_reaches_each_time() {
        use crate::model::schedule::*;
        let clock = ManualClock::new(t("2026-03-07T12:00:00Z"));
        let timing = validate_timing(
            &TimingRequest {
                schedule_type: ScheduleType::Cron,
                cron_expression: Some("30 2 * * *"),
                timezone: Some("America/New_York"),
                ..Default::default()
            },
            clock.now_ms(),
        )
        .unwrap();
        let created = NewSchedule {
            id: "s".into(),
            timing,
            missed_run_policy: MissedRunPolicy::Skip,
            overlap_policy: OverlapPolicy::Skip,
            after_schedule_id: None,
            target: TargetKind::Task,
            template: serde_json::Value::Null,
        }
        .created(clock.now_ms());
        let mut schedule = apply(None, &created).unwrap();
        let (fired_tx, mut fired) = tokio::sync::mpsc::unbounded_channel();
        let engine_clock = clock.clone();
        tokio::spawn(async move {
            let clock = engine_clock;
            for n in 0.. {
                let ctx = DueContext {
                    now: clock.now_ms(),
                    grace_ms: DEFAULT_GRACE_PERIOD_MS,
                    followed: None,
                };
                let events = match decide(&schedule, &ctx) {
                    Decision::WaitUntil(at) => {
                        sleep_until_ms(&clock, at).await;
                        continue;
                    }
                    Decision::Fire(plan) => {
                        let exec = format!("e{n}");
                        let _ = fired_tx.send(clock.now());
                        let mut events = plan.events(ctx.now, &exec, Launched::default());
                        events.push(ScheduleEvent::ExecutionEnded {
                            at: ctx.now,
                            execution_id: exec,
                            status: ExecutionStatus::Completed,
                        });
                        events
                    }
                    Decision::Record(events) => events,
                    Decision::Idle => break,
                };
                for event in &events {
                    schedule = apply(Some(&schedule), event).unwrap();
                }
            }
        });
        // 02:30 does not exist on 2026-03-08 in New York: that day's run is at 03:00 EDT.
        for due in [
            "2026-03-08T07:00:00Z",
            "2026-03-09T06:30:00Z",
            "2026-03-10T06:30:00Z",
        ] {
            clock.set(t(due) - TimeDelta::seconds(1));
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            assert!(fired.try_recv().is_err(), "fired before {due}");
            clock.set(t(due));
            let at = tokio::time::timeout(Duration::from_secs(5), fired.recv())
                .await
                .expect("the schedule did not fire when the clock reached its time")
                .unwrap();
            assert_eq!(at, t(due));
        }
    }

    /// A wall clock that jumps without telling anyone, as after a suspend or `date -s`.
    /// Tokio's (paused) time stands for the passing of real time.
    #[derive(Debug)]
    struct SilentlyJumpingClock {
        base: DateTime<Utc>,
        started: tokio::time::Instant,
        jump_ms: AtomicI64,
    }
    impl Clock for SilentlyJumpingClock {
        fn now(&self) -> DateTime<Utc> {
            self.base
                + TimeDelta::from_std(self.started.elapsed()).unwrap()
                + TimeDelta::milliseconds(self.jump_ms.load(Ordering::SeqCst))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_unannounced_wall_clock_jump_is_noticed_within_a_second() {
        let clock = Arc::new(SilentlyJumpingClock {
            base: t("2026-06-01T12:00:00Z"),
            started: tokio::time::Instant::now(),
            jump_ms: AtomicI64::new(0),
        });
        let deadline = t("2026-06-01T15:00:00Z"); // three hours away
        let waiter = {
            let clock = clock.clone();
            tokio::spawn(async move { sleep_until(&*clock, deadline).await })
        };
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert!(!waiter.is_finished());
        // The machine wakes from a suspend that lasted four hours: the monotonic timer
        // knows nothing of it.
        clock.jump_ms.store(4 * 3_600_000, Ordering::SeqCst);
        let jumped_at = tokio::time::Instant::now();
        waiter.await.unwrap();
        let noticed_after = jumped_at.elapsed();
        assert!(
            noticed_after <= RECHECK,
            "the jump was noticed after {noticed_after:?}, more than {RECHECK:?}"
        );
    }
}
