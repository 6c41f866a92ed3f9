//! The `ResourceGovernor`: who may start an agent now.
//!
//! Owns: the queue of tasks waiting for a slot (by priority, first come first served
//! within one), the set of granted slots, live CPU and memory measurements, and the
//! learned memory footprint of each agent kind. The decision itself is the pure
//! `model::admission::decide`, fed the figures measured here.
//! Must never: read the machine's figures on the actix thread (they are measured on the
//! blocking pool), or sleep between starts. A start is granted the moment a slot is free and
//! the measured headroom, less what agents still starting are expected to take, stays
//! above the reserves (the original waited 10 s between spawns, spec W16).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::model::Priority;
use crate::model::admission::{self, Decision, Limits, Load, Measured};
use crate::settings::SettingsSource;

/// A task may start its agent now. The task answers with `Release` if it cannot use it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Grant {
    pub task_id: String,
}

/// A task waits for a slot.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Enqueue {
    pub task_id: String,
    pub priority: Priority,
    pub agent: String,
    pub recipient: Recipient<Grant>,
}

/// A running agent found at recovery takes a slot without being granted one.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Adopted {
    pub task_id: String,
    pub agent: String,
}

/// A waiting task no longer wants a slot (cancelled while queued).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Withdraw {
    pub task_id: String,
}

/// A granted slot is free again; `max_rss_kb` teaches the governor the agent's size.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Release {
    pub task_id: String,
    pub max_rss_kb: Option<u64>,
}

struct Waiter {
    agent: String,
    recipient: Recipient<Grant>,
}

struct Slot {
    agent: String,
    granted_at: Instant,
}

/// An agent counts as "still starting" (its memory not yet visible) this long.
const STARTING_WINDOW: Duration = Duration::from_secs(2);
/// When resources block a start, look again this soon.
const RESOURCE_RECHECK: Duration = Duration::from_millis(250);
/// A measurement younger than this is used as it is.
const MEASUREMENT_FRESH: Duration = Duration::from_millis(100);

pub struct ResourceGovernor {
    settings: SettingsSource,
    order: BinaryHeap<Reverse<(Priority, u64, String)>>,
    waiting: HashMap<String, Waiter>,
    running: HashMap<String, Slot>,
    next_seq: u64,
    footprint: HashMap<String, u64>,
    /// The machine's probe; `None` while it is measuring on the blocking pool.
    sys: Option<sysinfo::System>,
    cores: f64,
    measured: Measured,
    measured_at: Option<Instant>,
    recheck_scheduled: bool,
    blocked_by_resources: Option<String>,
}

impl ResourceGovernor {
    pub fn new(settings: SettingsSource) -> ResourceGovernor {
        ResourceGovernor {
            settings,
            order: BinaryHeap::new(),
            waiting: HashMap::new(),
            running: HashMap::new(),
            next_seq: 0,
            footprint: HashMap::new(),
            sys: Some(sysinfo::System::new()),
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1) as f64,
            measured: Measured::default(),
            measured_at: None,
            recheck_scheduled: false,
            blocked_by_resources: None,
        }
    }

    fn measurement_is_fresh(&self) -> bool {
        self.measured_at
            .is_some_and(|t| t.elapsed() < MEASUREMENT_FRESH)
    }

    /// Measures the machine on the blocking pool (it reads `/proc` and the cgroup's
    /// files), then pumps again. At most one measurement runs at a time.
    fn measure(&mut self, ctx: &mut Context<Self>) {
        let Some(mut sys) = self.sys.take() else {
            return; // one is under way; it pumps when done
        };
        let cores = self.cores;
        let work = tokio::task::spawn_blocking(move || {
            sys.refresh_memory();
            sys.refresh_cpu_usage();
            let available_memory = match sys.cgroup_limits() {
                Some(c) if c.total_memory > 0 => c.free_memory.min(sys.available_memory()),
                _ => sys.available_memory(),
            };
            let measured = Measured {
                available_memory,
                cores,
                cpu_busy: f64::from(sys.global_cpu_usage()) / 100.0,
            };
            (sys, measured)
        });
        ctx.spawn(work.into_actor(self).map(|joined, act, ctx| {
            match joined {
                Ok((sys, measured)) => {
                    act.sys = Some(sys);
                    act.measured = measured;
                }
                Err(e) => {
                    // The figures stay as they were; a new probe starts from scratch.
                    tracing::error!(error = %e, "measuring the machine failed");
                    act.sys = Some(sysinfo::System::new());
                }
            }
            act.measured_at = Some(Instant::now());
            act.pump(ctx);
        }));
    }

    /// The admission decision for `agent`, from the last figures measured.
    fn decide(&self, agent: &str, limits: &Limits) -> Decision {
        let expected = |a: &str| {
            *self
                .footprint
                .get(a)
                .unwrap_or(&admission::DEFAULT_FOOTPRINT)
        };
        let starting: Vec<u64> = self
            .running
            .values()
            .filter(|s| s.granted_at.elapsed() < STARTING_WINDOW)
            .map(|s| expected(&s.agent))
            .collect();
        let footprint = expected(agent);
        let load = Load {
            running: self.running.len(),
            starting_footprints: &starting,
        };
        admission::decide(limits, &load, footprint, &self.measured)
    }

    /// Grants as many starts as slots and headroom allow, best first.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        let settings = (self.settings)();
        let limits = Limits {
            max_workers: settings.max_workers,
            memory_reserve: settings.memory_reserve,
            cpu_cores_reserved: settings.cpu_cores_reserved,
        };
        while let Some(Reverse((_, _, id))) = self.order.peek() {
            let id = id.clone();
            let Some(agent) = self.waiting.get(&id).map(|w| w.agent.clone()) else {
                self.order.pop(); // withdrawn
                continue;
            };
            let decision = self.decide(&agent, &limits);
            // A slot is free and the headroom matters: judge it on fresh figures.
            if decision != Decision::NoSlot
                && limits.needs_measurement()
                && !self.measurement_is_fresh()
            {
                return self.measure(ctx);
            }
            match decision {
                Decision::NoSlot => break,
                Decision::Defer(shortage) => {
                    let why = shortage.to_string();
                    if self.blocked_by_resources.as_deref() != Some(&why) {
                        tracing::info!(task = %id, %why, "start deferred for lack of headroom");
                    }
                    self.blocked_by_resources = Some(why);
                    if !self.recheck_scheduled {
                        self.recheck_scheduled = true;
                        ctx.run_later(RESOURCE_RECHECK, |act, ctx| {
                            act.recheck_scheduled = false;
                            act.pump(ctx);
                        });
                    }
                    return;
                }
                Decision::Admit => {}
            }
            self.blocked_by_resources = None;
            self.order.pop();
            let Some(waiter) = self.waiting.remove(&id) else {
                continue;
            };
            self.running.insert(
                id.clone(),
                Slot {
                    agent: waiter.agent,
                    granted_at: Instant::now(),
                },
            );
            waiter.recipient.do_send(Grant { task_id: id });
        }
    }
}

impl Actor for ResourceGovernor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // CPU usage is a difference of two readings: keep one recent.
        ctx.run_interval(Duration::from_secs(1), |act, ctx| act.measure(ctx));
    }
}

impl Handler<Enqueue> for ResourceGovernor {
    type Result = ();

    fn handle(&mut self, msg: Enqueue, ctx: &mut Context<Self>) {
        if self.running.contains_key(&msg.task_id) || self.waiting.contains_key(&msg.task_id) {
            return; // already known: never grant one task twice
        }
        self.next_seq += 1;
        self.order
            .push(Reverse((msg.priority, self.next_seq, msg.task_id.clone())));
        self.waiting.insert(
            msg.task_id,
            Waiter {
                agent: msg.agent,
                recipient: msg.recipient,
            },
        );
        self.pump(ctx);
    }
}

impl Handler<Adopted> for ResourceGovernor {
    type Result = ();

    fn handle(&mut self, msg: Adopted, _ctx: &mut Context<Self>) {
        // Adopted runs are not "starting": their memory is already measured.
        let long_ago = Instant::now()
            .checked_sub(STARTING_WINDOW)
            .unwrap_or_else(Instant::now);
        self.running.insert(
            msg.task_id,
            Slot {
                agent: msg.agent,
                granted_at: long_ago,
            },
        );
    }
}

impl Handler<Withdraw> for ResourceGovernor {
    type Result = ();

    fn handle(&mut self, msg: Withdraw, ctx: &mut Context<Self>) {
        self.waiting.remove(&msg.task_id);
        if self.running.remove(&msg.task_id).is_some() {
            self.pump(ctx);
        }
    }
}

impl Handler<Release> for ResourceGovernor {
    type Result = ();

    fn handle(&mut self, msg: Release, ctx: &mut Context<Self>) {
        if let Some(slot) = self.running.remove(&msg.task_id)
            && let Some(learned) = admission::learn_footprint(
                self.footprint.get(&slot.agent).copied(),
                msg.max_rss_kb.unwrap_or(0),
            )
        {
            self.footprint.insert(slot.agent, learned);
        }
        self.pump(ctx);
    }
}
