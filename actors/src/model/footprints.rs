//! The footprints learned from measured runs, by kind of work: what the governor expects
//! each kind to take at its peak, kept across daemon restarts.
//!
//! Owns: the table of learned footprints (keyed by agent, or by agent and kind of work:
//! `claude/loop-…`), how a measured run updates it (`model::admission::learn_*`), its
//! bound (the least recently learned kinds go first; agents' own entries are kept), and
//! its file form (JSON, versioned). A file that cannot be read teaches nothing: the
//! table starts empty, as a first daemon's does.
//! Must never: read or write files (the governor does, off the actix thread), or decide
//! admission (`model::admission`).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::admission::{self, Footprint};

/// At most this many kinds of work are remembered (agents' own entries do not count).
pub const MAX_KINDS: usize = 2000;

const FILE_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Entry {
    #[serde(flatten)]
    footprint: Footprint,
    /// When it was last learned, as a sequence number (for the bound).
    learned: u64,
}

/// The learned footprints.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LearnedFootprints {
    entries: HashMap<String, Entry>,
    seq: u64,
}

#[derive(Serialize, Deserialize)]
struct FileForm {
    version: u32,
    footprints: HashMap<String, Entry>,
}

/// A kind of work (`agent/kind`), as opposed to an agent as a whole.
fn is_kind(key: &str) -> bool {
    key.contains('/')
}

impl LearnedFootprints {
    pub fn get(&self, key: &str) -> Option<Footprint> {
        self.entries.get(key).map(|e| e.footprint)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A run of `key` peaked at `peak_memory` bytes and `peak_cpu` cores (`None`: too
    /// short to be sampled, so next to none).
    pub fn learn(&mut self, key: &str, peak_memory: u64, peak_cpu: Option<f64>) {
        self.seq += 1;
        let entry = self.entries.entry(key.to_string()).or_insert(Entry {
            footprint: Footprint::default(),
            learned: 0,
        });
        entry.learned = self.seq;
        let f = &mut entry.footprint;
        f.memory = admission::learn_memory(f.memory, peak_memory);
        f.cpu = match peak_cpu {
            Some(peak) => admission::learn_cpu(f.cpu, peak),
            None => f.cpu.or(Some(0.0)),
        };
        self.bound();
    }

    /// Keeps at most `MAX_KINDS` kinds of work, dropping the least recently learned.
    fn bound(&mut self) {
        let kinds = self.entries.keys().filter(|k| is_kind(k)).count();
        if kinds <= MAX_KINDS {
            return;
        }
        let mut by_age: Vec<(u64, String)> = self
            .entries
            .iter()
            .filter(|(k, _)| is_kind(k))
            .map(|(k, e)| (e.learned, k.clone()))
            .collect();
        by_age.sort_unstable();
        for (_, key) in by_age.into_iter().take(kinds - MAX_KINDS) {
            self.entries.remove(&key);
        }
    }

    /// The file form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&FileForm {
            version: FILE_VERSION,
            footprints: self.entries.clone(),
        })
        .unwrap_or_default()
    }

    /// Reads the file form; anything unreadable (another version, a torn or edited
    /// file) gives `None`, and the caller starts empty.
    pub fn from_json(text: &str) -> Option<LearnedFootprints> {
        let form: FileForm = serde_json::from_str(text).ok()?;
        if form.version != FILE_VERSION {
            return None;
        }
        let seq = form
            .footprints
            .values()
            .map(|e| e.learned)
            .max()
            .unwrap_or(0);
        let mut learned = LearnedFootprints {
            entries: form.footprints,
            seq,
        };
        learned.bound();
        Some(learned)
    }

    /// What was learned before a restart, under what this daemon learned since (which
    /// is newer and wins).
    pub fn merge_older(&mut self, older: LearnedFootprints) {
        let offset = older.seq;
        for entry in self.entries.values_mut() {
            entry.learned += offset;
        }
        self.seq += offset;
        for (key, entry) in older.entries {
            self.entries.entry(key).or_insert(entry);
        }
        self.bound();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_run_teaches_its_key_and_the_file_form_round_trips() {
        let mut l = LearnedFootprints::default();
        assert_eq!(l.get("claude"), None);
        l.learn("claude", 300 * MIB, Some(0.5));
        l.learn("claude/loop-1", 900 * MIB, None);
        assert_eq!(
            l.get("claude"),
            Some(Footprint {
                memory: Some(300 * MIB),
                cpu: Some(0.5)
            })
        );
        assert_eq!(l.get("claude/loop-1").unwrap().cpu, Some(0.0));
        // A smaller peak lowers the figure a quarter of the way.
        l.learn("claude", 100 * MIB, Some(0.5));
        assert_eq!(l.get("claude").unwrap().memory, Some(250 * MIB));
        let back = LearnedFootprints::from_json(&l.to_json()).expect("its own file form");
        assert_eq!(back, l);
    }

    #[test]
    fn an_unreadable_file_teaches_nothing() {
        for text in [
            "",
            "{",
            "null",
            r#"{"version":99,"footprints":{}}"#,
            r#"{"version":1,"footprints":{"claude":{"memory":"lots"}}}"#,
        ] {
            assert_eq!(LearnedFootprints::from_json(text), None, "{text}");
        }
    }

    #[test]
    fn the_least_recently_learned_kinds_go_first_and_agents_stay() {
        let mut l = LearnedFootprints::default();
        l.learn("claude", MIB, None);
        for i in 0..MAX_KINDS + 10 {
            l.learn(&format!("claude/schedule-{i}"), MIB, None);
        }
        assert_eq!(l.len(), MAX_KINDS + 1);
        assert!(
            l.get("claude").is_some(),
            "an agent's own entry was dropped"
        );
        assert!(l.get("claude/schedule-0").is_none());
        assert!(l.get("claude/schedule-9").is_none());
        assert!(l.get("claude/schedule-10").is_some());
        let last = format!("claude/schedule-{}", MAX_KINDS + 9);
        assert!(l.get(&last).is_some());
    }

    #[test]
    fn what_was_learned_since_a_restart_wins_over_the_file() {
        let mut before = LearnedFootprints::default();
        before.learn("codex", 200 * MIB, None);
        before.learn("claude", 100 * MIB, None);
        let mut now = LearnedFootprints::default();
        now.learn("claude", 700 * MIB, None);
        now.merge_older(LearnedFootprints::from_json(&before.to_json()).unwrap());
        assert_eq!(now.get("claude").unwrap().memory, Some(700 * MIB));
        assert_eq!(now.get("codex").unwrap().memory, Some(200 * MIB));
        // And it counts as newer for the bound.
        assert!(now.entries["claude"].learned > now.entries["codex"].learned);
    }
}
