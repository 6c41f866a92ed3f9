//! The `ResourceGovernor`: who may start an agent now.
//!
//! Owns: the queue of tasks waiting for a slot (by priority, first come first served
//! within one), the granted slots and what each running agent's process tree uses (sampled
//! from `/proc` for as long as it runs), the expected footprint learned for each kind of
//! work (kept across restarts in `footprints.json` beside the journal, written off the
//! actix thread), and telling waiting tasks why they wait. The decision itself is the
//! pure `model::admission::decide`, fed the figures measured here.
//! Must never: read the machine's figures on the actix thread (they are measured on the
//! blocking pool), sleep between starts, or stop a running agent: when memory runs short
//! anyway, starts stop and the log and the waiting tasks say why. A start is granted the
//! moment a slot is free and the measured headroom, less what running agents may still
//! grow by, covers the reserves and the candidate's expected peak.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::measure;
use crate::model::Priority;
use crate::model::admission::{
    self, Candidate, Decision, Footprint, Limits, Measured, RunningAgent, Shortage,
};
use crate::model::footprints::LearnedFootprints;
use crate::settings::{Settings, SettingsSource};

/// A task may start its agent now. The task answers with `Release` if it cannot use it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Grant {
    pub task_id: String,
}

/// Why a waiting task waits (`None`: it no longer waits for headroom). The task journals
/// it as its reason when it changed.
#[derive(Message, Debug, Clone, PartialEq)]
#[rtype(result = "()")]
pub struct WaitReason(pub Option<String>);

/// A task waits for a slot.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Enqueue {
    pub task_id: String,
    pub priority: Priority,
    pub agent: String,
    /// The kind of work, for the footprint learned from earlier runs (a loop's, a
    /// schedule's or a pipeline's id); `None`: the agent's name.
    pub footprint_key: Option<String>,
    pub recipient: Recipient<Grant>,
    pub reason_to: Option<Recipient<WaitReason>>,
}

/// Tasks are being journaled and will ask for slots as soon as they are: bring the
/// machine's figures up to date now, while the commit runs, so that their grants need
/// not wait for a measurement after it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Prepare;

/// A granted task's agent runs under this shim: its process tree is sampled from now on.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Launched {
    pub task_id: String,
    pub shim_pid: u32,
}

/// A running agent found at recovery takes a slot without being granted one.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Adopted {
    pub task_id: String,
    pub agent: String,
    pub shim_pid: Option<u32>,
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
    key: String,
    recipient: Recipient<Grant>,
    reason_to: Option<Recipient<WaitReason>>,
    /// The reason last told to the task.
    told: Option<String>,
}

struct Slot {
    agent: String,
    key: String,
    shim_pid: Option<u32>,
    /// Found running at recovery: what its kind takes is not known, and it must not keep
    /// everything else waiting as a first run would.
    adopted: bool,
    memory: u64,
    cpu: f64,
    peak_memory: u64,
    peak_cpu: Option<f64>,
    /// CPU ticks and CPU demand of the tree at the last sample, and when.
    ticks: Option<(u64, Option<u64>, Instant)>,
}

/// How often running agents and the machine are sampled while a reserve is set and
/// anything runs or waits.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// Learned footprints are written at most this often.
const SAVE_FOOTPRINTS_AFTER: Duration = Duration::from_secs(1);
/// A measurement younger than this is used as it is.
const MEASUREMENT_FRESH: Duration = Duration::from_millis(100);
/// CPU use is read over at least this long (clock ticks are 10 ms).
const CPU_WINDOW: Duration = Duration::from_millis(150);
/// The figures of a waiting reason are refreshed at most this often (each refresh is a
/// journaled event); a different kind of shortage is told at once.
const REASON_REFRESH: Duration = Duration::from_secs(2);

/// At most this many waiting tasks are told a new reason at once (each is a journaled
/// event); the rest of a long queue waits behind them without one.
const REASON_FANOUT: usize = 256;

/// One sample of the machine and of the running trees.
struct Sample {
    available_memory: u64,
    trees: HashMap<u32, measure::TreeUsage>,
    at: Instant,
}

pub struct ResourceGovernor {
    settings: SettingsSource,
    order: BinaryHeap<Reverse<(Priority, u64, String)>>,
    waiting: HashMap<String, Waiter>,
    running: HashMap<String, Slot>,
    next_seq: u64,
    learned: LearnedFootprints,
    /// Where `learned` is kept across restarts (`None`: in memory only).
    footprints_file: Option<PathBuf>,
    save_scheduled: bool,
    cores: f64,
    page_size: u64,
    ticks_per_second: u64,
    measuring: bool,
    measured: Measured,
    measured_at: Option<Instant>,
    recheck_scheduled: bool,
    /// The shortage holding the queue back, and when its figures were last told.
    shortage: Option<(Shortage, Instant)>,
    memory_ran_out: bool,
}

impl ResourceGovernor {
    pub fn new(settings: SettingsSource) -> ResourceGovernor {
        let (page_size, ticks_per_second) = measure::page_size_and_ticks();
        ResourceGovernor {
            settings,
            order: BinaryHeap::new(),
            waiting: HashMap::new(),
            running: HashMap::new(),
            next_seq: 0,
            learned: LearnedFootprints::default(),
            footprints_file: None,
            save_scheduled: false,
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1) as f64,
            page_size,
            ticks_per_second,
            measuring: false,
            measured: Measured::default(),
            measured_at: None,
            recheck_scheduled: false,
            shortage: None,
            memory_ran_out: false,
        }
    }

    /// Keeps what runs teach in `path` across restarts (read when the actor starts).
    pub fn with_footprints_file(mut self, path: PathBuf) -> ResourceGovernor {
        self.footprints_file = Some(path);
        self
    }

    /// Reads what earlier daemons learned, on the blocking pool.
    fn load_footprints(&mut self, ctx: &mut Context<Self>) {
        let Some(path) = self.footprints_file.clone() else {
            return;
        };
        let read = tokio::task::spawn_blocking(move || {
            let text = std::fs::read_to_string(&path).ok()?;
            let learned = LearnedFootprints::from_json(&text);
            if learned.is_none() {
                tracing::warn!(path = %path.display(), "footprints file unreadable; learning afresh");
            }
            learned
        });
        ctx.spawn(read.into_actor(self).map(|res, act, ctx| {
            if let Ok(Some(older)) = res {
                act.learned.merge_older(older);
                act.pump(ctx);
            }
        }));
    }

    /// Writes the learned footprints soon (at most once a second), on the blocking pool,
    /// by an atomic rename. Not fsynced: losing it costs one lone first run per kind.
    fn save_footprints_soon(&mut self, ctx: &mut Context<Self>) {
        if self.footprints_file.is_none() || self.save_scheduled {
            return;
        }
        self.save_scheduled = true;
        ctx.run_later(SAVE_FOOTPRINTS_AFTER, |act, _ctx| {
            act.save_scheduled = false;
            let (Some(path), json) = (act.footprints_file.clone(), act.learned.to_json()) else {
                return;
            };
            tokio::task::spawn_blocking(move || {
                let tmp = path.with_extension("json.tmp");
                let written = std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, &path));
                if let Err(e) = written {
                    tracing::warn!(path = %path.display(), error = %e, "could not keep the learned footprints");
                }
            });
        });
    }

    fn limits(settings: &Settings) -> Limits {
        Limits {
            max_workers: settings.max_workers,
            memory_reserve: settings.memory_reserve,
            cpu_cores_reserved: settings.cpu_cores_reserved,
        }
    }

    fn measurement_is_fresh(&self) -> bool {
        self.measured_at
            .is_some_and(|t| t.elapsed() < MEASUREMENT_FRESH)
    }

    /// Measures the machine and every running tree on the blocking pool, then pumps
    /// again. At most one measurement runs at a time.
    fn measure(&mut self, ctx: &mut Context<Self>) {
        if self.measuring {
            return; // one is under way; it pumps when done
        }
        self.measuring = true;
        let roots: Vec<u32> = self.running.values().filter_map(|s| s.shim_pid).collect();
        let page_size = self.page_size;
        let work = tokio::task::spawn_blocking(move || {
            let trees = measure::sample_trees(&roots, page_size);
            Sample {
                available_memory: measure::available_memory(),
                trees,
                at: Instant::now(),
            }
        });
        ctx.spawn(work.into_actor(self).map(|joined, act, ctx| {
            act.measuring = false;
            match joined {
                Ok(sample) => act.take_sample(sample),
                // The figures stay as they were.
                Err(e) => tracing::error!(error = %e, "measuring the machine failed"),
            }
            act.pump(ctx);
        }));
    }

    fn take_sample(&mut self, sample: Sample) {
        self.measured = Measured {
            available_memory: sample.available_memory,
            cores: self.cores,
        };
        self.measured_at = Some(sample.at);
        let ticks_per_second = self.ticks_per_second as f64;
        for slot in self.running.values_mut() {
            let Some(usage) = slot.shim_pid.and_then(|pid| sample.trees.get(&pid)) else {
                continue;
            };
            slot.memory = usage.rss_bytes;
            slot.peak_memory = slot.peak_memory.max(usage.rss_bytes);
            let now = (usage.cpu_ticks, usage.demand_ns, sample.at);
            match slot.ticks {
                Some((ticks, demand, then)) if sample.at.duration_since(then) >= CPU_WINDOW => {
                    let seconds = sample.at.duration_since(then).as_secs_f64();
                    // CPU time (every thread), or what it would take on an idle machine
                    // where the kernel says so (the main threads' run time plus run-queue
                    // wait: on a loaded machine CPU time understates a CPU-bound agent).
                    let used = usage.cpu_ticks.saturating_sub(ticks) as f64 / ticks_per_second;
                    let wanted = match (demand, usage.demand_ns) {
                        (Some(before), Some(after)) => after.saturating_sub(before) as f64 / 1e9,
                        _ => 0.0,
                    };
                    slot.cpu = used.max(wanted) / seconds;
                    slot.peak_cpu = Some(slot.peak_cpu.unwrap_or(0.0).max(slot.cpu));
                    slot.ticks = Some(now);
                }
                Some(_) => {}
                None => slot.ticks = Some(now),
            }
        }
        let reserve = (self.settings)().memory_reserve;
        let short = reserve > 0 && sample.available_memory < reserve;
        if short && !self.memory_ran_out {
            tracing::warn!(
                available = sample.available_memory,
                reserve,
                running = self.running.len(),
                "memory ran short: {} available under the {} memoryReserve; new starts are \
                 stopped until it is back, and running agents are left running",
                admission::human_bytes(sample.available_memory),
                admission::human_bytes(reserve),
            );
        } else if !short && self.memory_ran_out {
            tracing::info!(
                available = sample.available_memory,
                reserve,
                "memory is back above the memoryReserve; starts resume"
            );
        }
        self.memory_ran_out = short;
    }

    /// What `agent` doing work of `key` is expected to take: `expectedMemory` of its
    /// settings wins over what earlier runs taught; what runs of this kind of work
    /// taught wins over what any run of the agent taught.
    fn expected(&self, settings: &Settings, agent: &str, key: &str) -> Footprint {
        admission::expected_footprint(
            settings.agents.get(agent).and_then(|a| a.expected_memory),
            self.learned.get(key).unwrap_or_default(),
            self.learned.get(agent).unwrap_or_default(),
        )
    }

    fn running_agents(&self, settings: &Settings) -> Vec<RunningAgent> {
        self.running
            .values()
            .map(|s| {
                let mut expected = self.expected(settings, &s.agent, &s.key);
                if s.adopted {
                    // Nothing known: count what it uses, without holding everything back.
                    expected.memory.get_or_insert(0);
                    expected.cpu.get_or_insert(0.0);
                }
                RunningAgent {
                    key: s.key.clone(),
                    expected,
                    memory: s.memory,
                    cpu: s.cpu,
                }
            })
            .collect()
    }

    /// Grants as many starts as slots and headroom allow, best first.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        let settings = (self.settings)();
        let limits = Self::limits(&settings);
        let mut running = self.running_agents(&settings);
        while let Some(Reverse((_, _, id))) = self.order.peek() {
            let id = id.clone();
            let Some((agent, key)) = self
                .waiting
                .get(&id)
                .map(|w| (w.agent.clone(), w.key.clone()))
            else {
                self.order.pop(); // withdrawn
                continue;
            };
            let candidate = Candidate {
                key: &key,
                expected: self.expected(&settings, &agent, &key),
            };
            let decision = admission::decide(&limits, &running, &candidate, &self.measured);
            tracing::debug!(
                task = %id,
                ?decision,
                available = self.measured.available_memory,
                measured_ms_ago = self.measured_at.map(|t| t.elapsed().as_millis() as u64),
                running = ?running.iter().map(|r| (r.memory, r.expected.memory)).collect::<Vec<_>>(),
                "admission decision"
            );
            // A slot is free and the headroom matters: judge it on fresh figures.
            if decision != Decision::NoSlot
                && limits.needs_measurement()
                && !self.measurement_is_fresh()
            {
                return self.measure(ctx);
            }
            match decision {
                Decision::NoSlot => break,
                Decision::Defer(shortage) => return self.hold_back(shortage, &id, ctx),
                Decision::Admit => {}
            }
            running.push(RunningAgent {
                key: key.clone(),
                expected: candidate.expected,
                memory: 0,
                cpu: 0.0,
            });
            self.order.pop();
            let Some(waiter) = self.waiting.remove(&id) else {
                continue;
            };
            self.running.insert(
                id.clone(),
                Slot {
                    agent: waiter.agent,
                    key: waiter.key,
                    shim_pid: None,
                    adopted: false,
                    memory: 0,
                    cpu: 0.0,
                    peak_memory: 0,
                    peak_cpu: None,
                    ticks: None,
                },
            );
            waiter.recipient.do_send(Grant { task_id: id });
        }
        // Nothing waits for headroom any more: clear the reasons told.
        if self.shortage.take().is_some() {
            for waiter in self.waiting.values_mut() {
                if waiter.told.take().is_some()
                    && let Some(to) = &waiter.reason_to
                {
                    to.do_send(WaitReason(None));
                }
            }
        }
    }

    /// The queue waits for headroom: log it and tell the waiting tasks why. A new kind
    /// of shortage is told at once to the first `REASON_FANOUT` tasks in queue order;
    /// fresher figures of the same one only to the task at the head, at most every
    /// `REASON_REFRESH` (each telling is a journaled event). Then look again soon.
    fn hold_back(&mut self, shortage: Shortage, head: &str, ctx: &mut Context<Self>) {
        let same_kind = self
            .shortage
            .as_ref()
            .is_some_and(|(s, _)| std::mem::discriminant(s) == std::mem::discriminant(&shortage));
        let fresh = self
            .shortage
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() < REASON_REFRESH);
        if !(same_kind && fresh) {
            let why = shortage.to_string();
            let targets: Vec<String> = if same_kind {
                vec![head.to_string()]
            } else {
                tracing::info!(waiting = self.waiting.len(), %why, "starts held back");
                // The heap's order is the inner tuple's, best (smallest) first.
                let mut first: Vec<&(Priority, u64, String)> =
                    self.order.iter().map(|Reverse(entry)| entry).collect();
                first.sort_unstable();
                first.truncate(REASON_FANOUT);
                first.into_iter().map(|(_, _, id)| id.clone()).collect()
            };
            for id in targets {
                if let Some(waiter) = self.waiting.get_mut(&id)
                    && waiter.told.as_deref() != Some(&why)
                    && let Some(to) = &waiter.reason_to
                {
                    waiter.told = Some(why.clone());
                    to.do_send(WaitReason(Some(why.clone())));
                }
            }
            self.shortage = Some((shortage, Instant::now()));
        }
        if !self.recheck_scheduled {
            self.recheck_scheduled = true;
            ctx.run_later(SAMPLE_EVERY, |act, ctx| {
                act.recheck_scheduled = false;
                act.pump(ctx);
            });
        }
    }
}

impl Actor for ResourceGovernor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.load_footprints(ctx);
        // Running agents are sampled for as long as they run: their growth is what the
        // reserve is kept against. An idle daemon, or one without reserves, reads nothing.
        ctx.run_interval(SAMPLE_EVERY, |act, ctx| {
            let busy = !act.running.is_empty() || !act.waiting.is_empty();
            if busy && Self::limits(&(act.settings)()).needs_measurement() {
                act.measure(ctx);
            }
        });
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
        let key = match msg.footprint_key {
            Some(kind) => format!("{}/{kind}", msg.agent),
            None => msg.agent.clone(),
        };
        self.waiting.insert(
            msg.task_id,
            Waiter {
                agent: msg.agent,
                key,
                recipient: msg.recipient,
                reason_to: msg.reason_to,
                told: None,
            },
        );
        self.pump(ctx);
    }
}

impl Handler<Prepare> for ResourceGovernor {
    type Result = ();

    fn handle(&mut self, _msg: Prepare, ctx: &mut Context<Self>) {
        if Self::limits(&(self.settings)()).needs_measurement() && !self.measurement_is_fresh() {
            self.measure(ctx);
        }
    }
}

impl Handler<Launched> for ResourceGovernor {
    type Result = ();

    fn handle(&mut self, msg: Launched, _ctx: &mut Context<Self>) {
        if let Some(slot) = self.running.get_mut(&msg.task_id) {
            slot.shim_pid = Some(msg.shim_pid);
        }
    }
}

impl Handler<Adopted> for ResourceGovernor {
    type Result = ();

    fn handle(&mut self, msg: Adopted, _ctx: &mut Context<Self>) {
        self.running.insert(
            msg.task_id,
            Slot {
                key: msg.agent.clone(),
                agent: msg.agent,
                shim_pid: msg.shim_pid,
                adopted: true,
                memory: 0,
                cpu: 0.0,
                peak_memory: 0,
                peak_cpu: None,
                ticks: None,
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
        // The run's follower frees the slot the moment the agent's exit is reported,
        // and the task again when it handles the exit: the second finds it free.
        let Some(slot) = self.running.remove(&msg.task_id) else {
            return;
        };
        if let Some(max_rss_kb) = msg.max_rss_kb {
            // Only a run that ran teaches: the larger of the peak its shim measured for
            // one process and the peak sampled for its whole tree.
            let peak = (max_rss_kb * 1024).max(slot.peak_memory);
            let cores = self.cores;
            for key in admission::learning_keys(&slot.key, &slot.agent) {
                self.learned
                    .learn(key, peak, slot.peak_cpu.map(|c| c.min(cores)));
            }
            self.save_footprints_soon(ctx);
        }
        // The last measurement still counts the memory of the agent that just exited:
        // judged on it, the next start would wait for the next sample (up to 200 ms per
        // slot freed). The next decision measures again.
        self.measured_at = None;
        self.pump(ctx);
    }
}
