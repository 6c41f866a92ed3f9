//! Admission: may one more agent start now?
//!
//! Owns: the governor's decision, as a function of figures the governor measured and
//! passes in (free memory, busy CPU, cores), the work already admitted (running slots,
//! agents still starting and their expected footprints) and the limits of the settings
//! (`maxWorkers`, `memoryReserve`, `cpuCoresReserved`); and how a measured run teaches
//! the expected footprint of its agent kind.
//! Must never: measure anything, read the clock or wait. The governor samples the
//! machine and keeps the queue; this module only says yes, not now, or not yet.

use super::reasons;

/// Memory an agent kind is assumed to take before one has been measured.
pub const DEFAULT_FOOTPRINT: u64 = 64 << 20;
/// CPU an agent that is still starting is assumed to take, in cores: its load is not
/// yet visible in the measured usage.
pub const STARTING_CPU: f64 = 0.25;

/// The limits of the settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub max_workers: usize,
    /// Bytes of memory that must stay free after the agent took its share.
    pub memory_reserve: u64,
    /// Cores that must stay idle after the agents still starting took theirs.
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
    /// Share of all cores in use, 0.0 to 1.0.
    pub cpu_busy: f64,
}

/// The work already admitted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load<'a> {
    /// Slots granted and not yet released (starting agents included).
    pub running: usize,
    /// Expected footprints of the agents granted so recently that their memory is not
    /// yet visible in the measurement.
    pub starting_footprints: &'a [u64],
}

/// What stops a start for now; its `Display` is the governor's log line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shortage {
    Memory {
        free: u64,
        needed: u64,
    },
    Cpu {
        idle_cores: f64,
        reserved_cores: f64,
    },
}

impl std::fmt::Display for Shortage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Shortage::Memory { free, needed } => {
                f.write_str(&reasons::short_of_memory(free, needed))
            }
            Shortage::Cpu {
                idle_cores,
                reserved_cores,
            } => f.write_str(&reasons::short_of_cpu(idle_cores, reserved_cores)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Grant the slot now.
    Admit,
    /// Every slot is taken: wait for a release.
    NoSlot,
    /// A slot is free but the machine lacks headroom: look again soon.
    Defer(Shortage),
}

/// Whether an agent expected to take `footprint` bytes may start. `measured` is read
/// only when `limits.needs_measurement()`; pass `Measured::default()` otherwise.
pub fn decide(limits: &Limits, load: &Load<'_>, footprint: u64, measured: &Measured) -> Decision {
    if load.running >= limits.max_workers {
        return Decision::NoSlot;
    }
    if limits.memory_reserve > 0 {
        let pending: u64 = load.starting_footprints.iter().sum();
        let free = measured.available_memory.saturating_sub(pending);
        let needed = limits.memory_reserve.saturating_add(footprint);
        if free < needed {
            return Decision::Defer(Shortage::Memory { free, needed });
        }
    }
    if limits.cpu_cores_reserved > 0.0 {
        let idle = measured.cores * (1.0 - measured.cpu_busy)
            - load.starting_footprints.len() as f64 * STARTING_CPU;
        if idle < limits.cpu_cores_reserved {
            return Decision::Defer(Shortage::Cpu {
                idle_cores: idle,
                reserved_cores: limits.cpu_cores_reserved,
            });
        }
    }
    Decision::Admit
}

/// The expected footprint after a run of the kind peaked at `max_rss_kb`: a moving
/// average that follows recent runs. A run that reported no peak teaches nothing.
pub fn learn_footprint(previous: Option<u64>, max_rss_kb: u64) -> Option<u64> {
    if max_rss_kb == 0 {
        return previous;
    }
    let seen = max_rss_kb * 1024;
    Some(match previous {
        Some(old) => (old * 3 + seen) / 4,
        None => seen,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    fn limits(max_workers: usize, memory_reserve: u64, cpu: f64) -> Limits {
        Limits {
            max_workers,
            memory_reserve,
            cpu_cores_reserved: cpu,
        }
    }

    fn idle_machine() -> Measured {
        Measured {
            available_memory: 8 * GIB,
            cores: 4.0,
            cpu_busy: 0.0,
        }
    }

    #[test]
    fn a_full_pool_admits_nobody_whatever_the_headroom() {
        let load = Load {
            running: 2,
            starting_footprints: &[],
        };
        assert_eq!(
            decide(&limits(2, 0, 0.0), &load, MIB, &idle_machine()),
            Decision::NoSlot
        );
        let load = Load { running: 1, ..load };
        assert_eq!(
            decide(&limits(2, 0, 0.0), &load, MIB, &idle_machine()),
            Decision::Admit
        );
    }

    #[test]
    fn without_reserves_the_measurement_is_not_consulted() {
        let load = Load {
            running: 0,
            starting_footprints: &[GIB, GIB],
        };
        assert!(!limits(4, 0, 0.0).needs_measurement());
        assert_eq!(
            decide(&limits(4, 0, 0.0), &load, GIB, &Measured::default()),
            Decision::Admit
        );
    }

    #[test]
    fn memory_must_cover_the_reserve_plus_the_agent() {
        let measured = Measured {
            available_memory: GIB,
            ..idle_machine()
        };
        let load = Load {
            running: 0,
            starting_footprints: &[],
        };
        // 1 GiB free: a 512 MiB reserve and a 512 MiB agent just fit; one byte more does not.
        assert_eq!(
            decide(&limits(4, 512 * MIB, 0.0), &load, 512 * MIB, &measured),
            Decision::Admit
        );
        assert_eq!(
            decide(&limits(4, 512 * MIB, 0.0), &load, 512 * MIB + 1, &measured),
            Decision::Defer(Shortage::Memory {
                free: GIB,
                needed: GIB + 1
            })
        );
    }

    #[test]
    fn agents_still_starting_count_against_the_free_memory() {
        let measured = Measured {
            available_memory: 2 * GIB,
            ..idle_machine()
        };
        let starting = [600 * MIB, 600 * MIB];
        let load = Load {
            running: 2,
            starting_footprints: &starting,
        };
        // 2 GiB measured, 1200 MiB of it promised to the two starting agents.
        let decision = decide(&limits(8, 512 * MIB, 0.0), &load, 512 * MIB, &measured);
        assert_eq!(
            decision,
            Decision::Defer(Shortage::Memory {
                free: 848 * MIB,
                needed: GIB
            })
        );
        assert_eq!(
            decision_text(decision),
            "memory: 848 MiB available, 1024 MiB needed (memoryReserve plus the agent)"
        );
        let settled = Load {
            running: 2,
            starting_footprints: &[],
        };
        assert_eq!(
            decide(&limits(8, 512 * MIB, 0.0), &settled, 512 * MIB, &measured),
            Decision::Admit
        );
    }

    #[test]
    fn idle_cores_less_what_starting_agents_take_must_cover_the_reserve() {
        // 4 cores, 50 % busy: 2 idle; three starting agents are assumed to take 0.75.
        let measured = Measured {
            cpu_busy: 0.5,
            ..idle_machine()
        };
        let starting = [MIB, MIB, MIB];
        let load = Load {
            running: 3,
            starting_footprints: &starting,
        };
        assert_eq!(
            decide(&limits(8, 0, 1.0), &load, MIB, &measured),
            Decision::Admit
        );
        assert_eq!(
            decide(&limits(8, 0, 1.5), &load, MIB, &measured),
            Decision::Defer(Shortage::Cpu {
                idle_cores: 1.25,
                reserved_cores: 1.5
            })
        );
        let busy = Measured {
            cpu_busy: 0.9,
            ..idle_machine()
        };
        assert!(matches!(
            decide(
                &limits(8, 0, 1.0),
                &Load {
                    running: 0,
                    starting_footprints: &[]
                },
                MIB,
                &busy
            ),
            Decision::Defer(Shortage::Cpu { .. })
        ));
    }

    #[test]
    fn memory_is_judged_before_cpu() {
        let measured = Measured {
            available_memory: 0,
            cores: 1.0,
            cpu_busy: 1.0,
        };
        let load = Load {
            running: 0,
            starting_footprints: &[],
        };
        assert!(matches!(
            decide(&limits(1, MIB, 0.5), &load, MIB, &measured),
            Decision::Defer(Shortage::Memory { .. })
        ));
    }

    #[test]
    fn the_footprint_follows_recent_runs() {
        assert_eq!(learn_footprint(None, 0), None);
        assert_eq!(learn_footprint(Some(MIB), 0), Some(MIB));
        assert_eq!(learn_footprint(None, 1024), Some(MIB));
        // Three parts old, one part new.
        assert_eq!(learn_footprint(Some(4 * MIB), 8 * 1024), Some(5 * MIB));
    }

    fn decision_text(d: Decision) -> String {
        match d {
            Decision::Defer(s) => s.to_string(),
            other => format!("{other:?}"),
        }
    }
}
