//! `ScheduleTimer`: the one timer behind every schedule.
//!
//! Owns: a `DueQueue` of each waiting schedule's next wall-clock instant, and one sleeping
//! future on the earliest (`clock_timer::sleep_until_ms`, which re-reads the wall clock
//! at least once a second, so a suspend or a clock change is noticed). When instants
//! pass, it wakes those schedules' actors. 10 000 idle schedules cost one sleeping
//! future, not 10 000.
//! Must never: decide anything about a schedule (its actor does, with `model::schedule`),
//! or read the machine's clock other than through the engine's `Clock`.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;

use crate::clock_timer::sleep_until_ms;
use crate::model::Millis;
use crate::model::clock::{Clock, DueQueue};

/// Told to a schedule's actor when the instant it asked for came.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Wake;

/// Wake `target` at `at` (replacing the instant it asked for before).
#[derive(Message)]
#[rtype(result = "()")]
pub struct WakeAt {
    pub id: String,
    pub at: Millis,
    pub target: Recipient<Wake>,
}

/// `id` needs no wake any more (paused without expiry, finished).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Forget {
    pub id: String,
}

pub struct ScheduleTimer {
    clock: Arc<dyn Clock>,
    queue: DueQueue,
    targets: HashMap<String, Recipient<Wake>>,
    /// The instant the sleeping future waits for, and its handle.
    armed: Option<(Millis, SpawnHandle)>,
}

impl ScheduleTimer {
    pub fn new(clock: Arc<dyn Clock>) -> ScheduleTimer {
        ScheduleTimer {
            clock,
            queue: DueQueue::new(),
            targets: HashMap::new(),
            armed: None,
        }
    }

    /// Sleeps until the earliest instant, if it is not the one already slept for.
    fn rearm(&mut self, ctx: &mut Context<Self>) {
        let next = self.queue.next_deadline();
        if self.armed.as_ref().map(|(at, _)| *at) == next {
            return;
        }
        if let Some((_, handle)) = self.armed.take() {
            ctx.cancel_future(handle);
        }
        let Some(at) = next else { return };
        let clock = self.clock.clone();
        let sleep = async move { sleep_until_ms(&*clock, at).await };
        let handle = ctx.spawn(sleep.into_actor(self).map(|_, act, ctx| {
            act.armed = None;
            act.wake_due(ctx);
        }));
        self.armed = Some((at, handle));
    }

    fn wake_due(&mut self, ctx: &mut Context<Self>) {
        let now = self.clock.now_ms();
        for (id, _) in self.queue.pop_due(now) {
            if let Some(target) = self.targets.remove(&id) {
                target.do_send(Wake);
            }
        }
        self.rearm(ctx);
    }
}

impl Actor for ScheduleTimer {
    type Context = Context<Self>;
}

impl Handler<WakeAt> for ScheduleTimer {
    type Result = ();

    fn handle(&mut self, msg: WakeAt, ctx: &mut Context<Self>) {
        self.queue.set(&msg.id, msg.at);
        self.targets.insert(msg.id, msg.target);
        self.rearm(ctx);
    }
}

impl Handler<Forget> for ScheduleTimer {
    type Result = ();

    fn handle(&mut self, msg: Forget, ctx: &mut Context<Self>) {
        self.queue.remove(&msg.id);
        self.targets.remove(&msg.id);
        self.rearm(ctx);
    }
}
