//! Admission: may one more agent start now?
//!
//! Owns: the governor's decision, as a function of figures the governor measured and
//! passes in (available memory, cores), the agents already running (what each is expected
//! to take at its peak and what it uses now), the candidate's expected footprint and the
//! limits of the settings (`maxWorkers`, `memoryReserve`, `cpuCoresReserved`); how a
//! measured run teaches the expected footprint of its kind; and the texts that say why a
//! start waits.
//! Must never: measure anything, read the clock or wait. The governor samples the
//! machine and keeps the queue; this module only says yes, not now, or not yet.
//!
//! Every running agent holds back what it may still grow by, `max(0, expected peak -
//! what it uses now)`, for as long as it runs: measured available memory already counts
//! what it uses. A kind of work nothing is known about starts alone, so that its first
//! run teaches its footprint without anything else's growth in the way.

/// The limits of the settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub max_workers: usize,
    /// Bytes of memory that must stay available, whatever the agents grow to.
    pub memory_reserve: u64,
    /// Cores the agents must leave to everything else.
    pub cpu_cores_reserved: f64,
}

impl Limits {
    /// Whether the decision needs the machine measured at all (no reserve, no need).
    pub fn needs_measurement(&self) -> bool {
        self.memory_reserve > 0 || self.cpu_cores_reserved > 0.0
    }
}

/// The machine as the governor just measured it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Measured {
    /// Bytes of memory available (the smaller of the machine's and the cgroup's).
    pub available_memory: u64,
    pub cores: f64,
}

/// What a kind of work is expected to take at its peak; `None` where nothing is known.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Footprint {
    pub memory: Option<u64>,
    /// Cores.
    pub cpu: Option<f64>,
}

impl Footprint {
    /// Whether the figures the limits use are known (a reserve that is off needs none).
    pub fn known_for(&self, limits: &Limits) -> bool {
        (limits.memory_reserve == 0 || self.memory.is_some())
            && (limits.cpu_cores_reserved <= 0.0 || self.cpu.is_some())
    }
}

/// One running agent.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningAgent {
    /// Its kind (the footprint key).
    pub key: String,
    pub expected: Footprint,
    /// What its process tree uses now.
    pub memory: u64,
    pub cpu: f64,
}

impl RunningAgent {
    fn memory_to_grow(&self) -> u64 {
        self.expected
            .memory
            .unwrap_or(0)
            .saturating_sub(self.memory)
    }
    /// The cores it counts for: what it uses now or is expected to, the larger.
    fn cores(&self) -> f64 {
        self.cpu.max(self.expected.cpu.unwrap_or(0.0))
    }
}

/// The agent asking to start.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate<'a> {
    pub key: &'a str,
    pub expected: Footprint,
}

/// What stops a start for now; its `Display` is the waiting task's reason.
#[derive(Debug, Clone, PartialEq)]
pub enum Shortage {
    /// The candidate's peak does not fit above the reserve.
    Memory {
        available: u64,
        /// What running agents may still grow by.
        to_grow: u64,
        reserve: u64,
        expected: u64,
        key: String,
    },
    /// Available memory is already below the reserve: agents grew past what was
    /// expected. Starts stop; nothing running is stopped.
    MemoryRanOut { available: u64, reserve: u64 },
    /// Nothing is known about the candidate's kind and other agents run.
    Learning { key: String, running: usize },
    /// A kind that nothing is known about runs its first, lone run.
    AloneRunning { key: String },
    Cpu {
        agents_cores: f64,
        expected: f64,
        budget: f64,
        key: String,
    },
}

/// 1.5 GiB, 800 MiB.
pub fn human_bytes(bytes: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / GIB)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

impl std::fmt::Display for Shortage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = |n: u64| human_bytes(n);
        match self {
            Shortage::Memory {
                available,
                to_grow,
                reserve,
                expected,
                key,
            } => {
                write!(f, "waiting for memory: {} available", b(*available))?;
                if *to_grow > 0 {
                    write!(f, ", {} of it promised to running agents", b(*to_grow))?;
                }
                write!(
                    f,
                    "; {} reserved (memoryReserve) plus {} expected for {key}",
                    b(*reserve),
                    b(*expected)
                )
            }
            Shortage::MemoryRanOut { available, reserve } => write!(
                f,
                "new starts stopped: memory ran short, {} available under the {} memoryReserve \
                 (agents grew past what was expected); running agents are left running",
                b(*available),
                b(*reserve)
            ),
            Shortage::Learning { key, running } => write!(
                f,
                "waiting to start alone: nothing is known yet about what {key} takes, so its \
                 first run waits for the {running} running agent(s) to end"
            ),
            Shortage::AloneRunning { key } => write!(
                f,
                "waiting for the first run of {key} to end: it runs alone to learn what it takes"
            ),
            Shortage::Cpu {
                agents_cores,
                expected,
                budget,
                key,
            } => write!(
                f,
                "waiting for cpu: running agents take {agents_cores:.1} cores and {key} is \
                 expected to take {expected:.1}, of the {budget:.1} the agents may take \
                 (cpuCoresReserved)"
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Grant the slot now.
    Admit,
    /// Every slot is taken: wait for a release.
    NoSlot,
    /// A slot is free but the machine lacks headroom: look again soon.
    Defer(Shortage),
}

/// Whether `candidate` may start. `measured` is read only when
/// `limits.needs_measurement()`; pass `Measured::default()` otherwise.
pub fn decide(
    limits: &Limits,
    running: &[RunningAgent],
    candidate: &Candidate<'_>,
    measured: &Measured,
) -> Decision {
    if running.len() >= limits.max_workers {
        return Decision::NoSlot;
    }
    if !limits.needs_measurement() {
        return Decision::Admit;
    }
    if limits.memory_reserve > 0 && measured.available_memory < limits.memory_reserve {
        return Decision::Defer(Shortage::MemoryRanOut {
            available: measured.available_memory,
            reserve: limits.memory_reserve,
        });
    }
    if let Some(lone) = running.iter().find(|r| !r.expected.known_for(limits)) {
        return Decision::Defer(Shortage::AloneRunning {
            key: lone.key.clone(),
        });
    }
    if !candidate.expected.known_for(limits) && limits.cpu_cores_reserved < measured.cores {
        return if running.is_empty() {
            Decision::Admit
        } else {
            Decision::Defer(Shortage::Learning {
                key: candidate.key.to_string(),
                running: running.len(),
            })
        };
    }
    if limits.memory_reserve > 0 {
        let to_grow: u64 = running.iter().map(RunningAgent::memory_to_grow).sum();
        let expected = candidate.expected.memory.unwrap_or(0);
        let headroom = measured.available_memory.saturating_sub(to_grow);
        if headroom < limits.memory_reserve.saturating_add(expected) {
            return Decision::Defer(Shortage::Memory {
                available: measured.available_memory,
                to_grow,
                reserve: limits.memory_reserve,
                expected,
                key: candidate.key.to_string(),
            });
        }
    }
    // Agents never take more than the cores left after the reserve; one alone may,
    // or an agent bigger than the budget would never run.
    if limits.cpu_cores_reserved > 0.0 {
        let agents_cores: f64 = running.iter().map(RunningAgent::cores).sum();
        let expected = candidate.expected.cpu.unwrap_or(0.0);
        let budget = measured.cores - limits.cpu_cores_reserved;
        let over = agents_cores + expected > budget + CPU_SLACK;
        if budget <= 0.0 || (over && !running.is_empty()) {
            return Decision::Defer(Shortage::Cpu {
                agents_cores,
                expected,
                budget,
                key: candidate.key.to_string(),
            });
        }
    }
    Decision::Admit
}

/// CPU figures are sampled from clock ticks: a core's worth can read a few percent high.
const CPU_SLACK: f64 = 0.05;

/// The expected peak memory after a run of the kind peaked at `peak`: a larger peak is
/// taken at once (a breach costs more than a wait), a smaller one lowers the figure a
/// quarter of the way. A run that measured nothing teaches nothing.
pub fn learn_memory(previous: Option<u64>, peak: u64) -> Option<u64> {
    if peak == 0 {
        return previous;
    }
    Some(match previous {
        Some(old) if old > peak => (old * 3 + peak) / 4,
        _ => peak,
    })
}

/// The expected cores of a kind after a run that peaked at `peak` cores, as for memory.
pub fn learn_cpu(previous: Option<f64>, peak: f64) -> Option<f64> {
    Some(match previous {
        Some(old) if old > peak => (old * 3.0 + peak) / 4.0,
        _ => peak,
    })
}

/// What a run of `agent` doing work of `key` is expected to take: the user's
/// `expectedMemory` first, then what earlier runs of this kind of work taught (a loop's
/// iterations, a schedule's runs), then what any run of the agent taught.
pub fn expected_footprint(
    configured_memory: Option<u64>,
    of_kind: Footprint,
    of_agent: Footprint,
) -> Footprint {
    Footprint {
        memory: configured_memory.or(of_kind.memory).or(of_agent.memory),
        cpu: of_kind.cpu.or(of_agent.cpu),
    }
}

/// The footprints a finished run teaches: its kind of work's and, when that is
/// narrower, its agent's as a whole.
pub fn learning_keys<'a>(key: &'a str, agent: &'a str) -> Vec<&'a str> {
    if key == agent {
        vec![key]
    } else {
        vec![key, agent]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_of_work_is_expected_to_take_what_it_took_before_the_agent_as_a_fallback() {
        let kind = Footprint {
            memory: Some(3 * GIB),
            cpu: Some(1.0),
        };
        let agent = Footprint {
            memory: Some(GIB),
            cpu: Some(0.2),
        };
        assert_eq!(expected_footprint(None, kind, agent), kind);
        // A loop's first iteration: its agent's footprint, not "unknown, start alone".
        assert_eq!(expected_footprint(None, Footprint::default(), agent), agent);
        // The user's figure wins for memory.
        assert_eq!(
            expected_footprint(Some(5 * GIB), kind, agent).memory,
            Some(5 * GIB)
        );
        assert_eq!(
            expected_footprint(None, Footprint::default(), Footprint::default()),
            Footprint::default()
        );
        assert_eq!(
            learning_keys("claude/loop-1", "claude"),
            ["claude/loop-1", "claude"]
        );
        assert_eq!(learning_keys("claude", "claude"), ["claude"]);
    }

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    fn limits(max_workers: usize, memory_reserve: u64, cpu: f64) -> Limits {
        Limits {
            max_workers,
            memory_reserve,
            cpu_cores_reserved: cpu,
        }
    }

    fn machine(available: u64, cores: f64) -> Measured {
        Measured {
            available_memory: available,
            cores,
        }
    }

    fn known(memory: u64, cpu: f64) -> Footprint {
        Footprint {
            memory: Some(memory),
            cpu: Some(cpu),
        }
    }

    fn agent(expected: Footprint, memory: u64, cpu: f64) -> RunningAgent {
        RunningAgent {
            key: "fake".into(),
            expected,
            memory,
            cpu,
        }
    }

    fn candidate(expected: Footprint) -> Candidate<'static> {
        Candidate {
            key: "fake",
            expected,
        }
    }

    #[test]
    fn a_full_pool_admits_nobody_whatever_the_headroom() {
        let two = vec![agent(known(MIB, 0.1), MIB, 0.1); 2];
        let c = candidate(known(MIB, 0.1));
        let m = machine(8 * GIB, 4.0);
        assert_eq!(decide(&limits(2, 0, 0.0), &two, &c, &m), Decision::NoSlot);
        assert_eq!(
            decide(&limits(2, 0, 0.0), &two[..1], &c, &m),
            Decision::Admit
        );
    }

    #[test]
    fn without_reserves_nothing_is_measured_or_learned() {
        let unknown = vec![agent(Footprint::default(), 0, 0.0)];
        assert!(!limits(4, 0, 0.0).needs_measurement());
        assert_eq!(
            decide(
                &limits(4, 0, 0.0),
                &unknown,
                &candidate(Footprint::default()),
                &Measured::default()
            ),
            Decision::Admit
        );
    }

    #[test]
    fn memory_must_cover_the_reserve_plus_the_candidate_peak() {
        let m = machine(GIB, 4.0);
        let l = limits(4, 512 * MIB, 0.0);
        let fits = candidate(known(512 * MIB, 0.1));
        assert_eq!(decide(&l, &[], &fits, &m), Decision::Admit);
        let too_big = candidate(known(512 * MIB + 1, 0.1));
        assert_eq!(
            decide(&l, &[], &too_big, &m),
            Decision::Defer(Shortage::Memory {
                available: GIB,
                to_grow: 0,
                reserve: 512 * MIB,
                expected: 512 * MIB + 1,
                key: "fake".into()
            })
        );
    }

    #[test]
    fn running_agents_hold_back_what_they_may_still_grow_by_for_as_long_as_they_run() {
        // 8 GiB available, 2 GiB reserve. Two agents expected to peak at 3 GiB, one at
        // 1 GiB so far, one already at 3.5 GiB (past its expectation: holds nothing).
        let running = vec![
            agent(known(3 * GIB, 0.1), GIB, 0.1),
            agent(known(3 * GIB, 0.1), 3 * GIB + GIB / 2, 0.1),
        ];
        let l = limits(8, 2 * GIB, 0.0);
        let m = machine(8 * GIB, 4.0);
        // 8 - 2 still to grow = 6 >= 2 reserve + 4 expected.
        assert_eq!(
            decide(&l, &running, &candidate(known(4 * GIB, 0.1)), &m),
            Decision::Admit
        );
        let d = decide(&l, &running, &candidate(known(4 * GIB + 1, 0.1)), &m);
        assert!(
            matches!(d, Decision::Defer(Shortage::Memory { to_grow, .. }) if to_grow == 2 * GIB)
        );
        // Once the first agent reached its peak it holds nothing back either.
        let grown = vec![agent(known(3 * GIB, 0.1), 3 * GIB, 0.1), running[1].clone()];
        assert_eq!(
            decide(&l, &grown, &candidate(known(6 * GIB, 0.1)), &m),
            Decision::Admit
        );
    }

    #[test]
    fn below_the_reserve_starts_stop_and_say_so() {
        let running = vec![agent(known(GIB, 0.1), 5 * GIB, 0.1)];
        let d = decide(
            &limits(8, 4 * GIB, 0.0),
            &running,
            &candidate(known(MIB, 0.1)),
            &machine(3 * GIB, 4.0),
        );
        assert_eq!(
            d,
            Decision::Defer(Shortage::MemoryRanOut {
                available: 3 * GIB,
                reserve: 4 * GIB
            })
        );
        let Decision::Defer(s) = d else {
            unreachable!()
        };
        assert_eq!(
            s.to_string(),
            "new starts stopped: memory ran short, 3.0 GiB available under the 4.0 GiB \
             memoryReserve (agents grew past what was expected); running agents are left running"
        );
    }

    #[test]
    fn an_unknown_kind_starts_alone_and_nothing_starts_beside_it() {
        let l = limits(8, GIB, 0.0);
        let m = machine(32 * GIB, 4.0);
        let unknown = Candidate {
            key: "loop-7",
            expected: Footprint::default(),
        };
        assert_eq!(decide(&l, &[], &unknown, &m), Decision::Admit);
        let other = vec![agent(known(MIB, 0.1), MIB, 0.1)];
        assert_eq!(
            decide(&l, &other, &unknown, &m),
            Decision::Defer(Shortage::Learning {
                key: "loop-7".into(),
                running: 1
            })
        );
        let mut probe = agent(Footprint::default(), MIB, 0.1);
        probe.key = "loop-7".into();
        assert_eq!(
            decide(&l, &[probe], &candidate(known(MIB, 0.1)), &m),
            Decision::Defer(Shortage::AloneRunning {
                key: "loop-7".into()
            })
        );
        // A reserve that is off needs no figure: memory known is enough without cpu.
        let memory_only = Footprint {
            memory: Some(MIB),
            cpu: None,
        };
        assert_eq!(
            decide(&l, &other, &candidate(memory_only), &m),
            Decision::Admit
        );
    }

    #[test]
    fn agents_never_take_more_than_the_cores_left_after_the_reserve() {
        // 4 cores, 1 reserved: 3 for agents. Each burns one core.
        let l = limits(8, 0, 1.0);
        let m = machine(0, 4.0);
        let burner = known(0, 1.0);
        let two = vec![agent(burner, 0, 1.0); 2];
        assert_eq!(decide(&l, &two, &candidate(burner), &m), Decision::Admit);
        let three = vec![agent(burner, 0, 1.0); 3];
        let d = decide(&l, &three, &candidate(burner), &m);
        assert!(matches!(d, Decision::Defer(Shortage::Cpu { budget, .. }) if budget == 3.0));
        // Counted at its expectation even while it still starts and uses nothing yet.
        let starting = vec![agent(burner, 0, 0.0); 3];
        assert!(matches!(
            decide(&l, &starting, &candidate(burner), &m),
            Decision::Defer(Shortage::Cpu { .. })
        ));
        // And at what it uses when that is more than expected.
        let hungry = vec![agent(known(0, 0.1), 0, 2.9)];
        assert!(matches!(
            decide(&l, &hungry, &candidate(known(0, 0.2)), &m),
            Decision::Defer(Shortage::Cpu { .. })
        ));
        // One agent alone may exceed the budget, or it would never run.
        assert_eq!(
            decide(&l, &[], &candidate(known(0, 3.5)), &m),
            Decision::Admit
        );
        // Unless the reserve leaves the agents no core at all.
        assert!(matches!(
            decide(
                &limits(8, 0, 4.0),
                &[],
                &candidate(Footprint::default()),
                &m
            ),
            Decision::Defer(Shortage::Cpu { .. })
        ));
    }

    #[test]
    fn the_reasons_read_as_sentences() {
        let memory = Shortage::Memory {
            available: 3 * GIB + GIB / 10,
            to_grow: GIB,
            reserve: 4 * GIB,
            expected: GIB + GIB / 2,
            key: "claude".into(),
        };
        assert_eq!(
            memory.to_string(),
            "waiting for memory: 3.1 GiB available, 1.0 GiB of it promised to running agents; \
             4.0 GiB reserved (memoryReserve) plus 1.5 GiB expected for claude"
        );
        let cpu = Shortage::Cpu {
            agents_cores: 1.0,
            expected: 1.0,
            budget: 1.0,
            key: "burn".into(),
        };
        assert_eq!(
            cpu.to_string(),
            "waiting for cpu: running agents take 1.0 cores and burn is expected to take 1.0, \
             of the 1.0 the agents may take (cpuCoresReserved)"
        );
        assert_eq!(human_bytes(800 * MIB), "800 MiB");
    }

    #[test]
    fn a_larger_peak_is_learned_at_once_a_smaller_one_slowly() {
        assert_eq!(learn_memory(None, 0), None);
        assert_eq!(learn_memory(Some(MIB), 0), Some(MIB));
        assert_eq!(learn_memory(None, MIB), Some(MIB));
        assert_eq!(learn_memory(Some(MIB), 8 * MIB), Some(8 * MIB));
        assert_eq!(learn_memory(Some(8 * MIB), 4 * MIB), Some(7 * MIB));
        assert_eq!(learn_cpu(None, 0.5), Some(0.5));
        assert_eq!(learn_cpu(Some(1.0), 0.6), Some(0.9));
    }
}
