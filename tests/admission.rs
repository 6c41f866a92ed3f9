//! Admission by the ResourceGovernor: never more agents than `maxWorkers`, a start held
//! back while the memory reserve would be crossed, and configuration changes that apply
//! to waiting work without a restart.

mod common;

use std::time::Duration;

use common::{Beat, wait_until};
use serde_json::json;

#[test]
fn never_more_agents_at_once_than_max_workers() {
    let beat = Beat::with_config(json!({ "maxWorkers": 2 }));
    // Each agent waits until two agents have run at once: the first two can only
    // finish if both slots were granted together.
    let ids = submit_meeting_in_pairs(&beat, 8);
    for id in &ids {
        assert_eq!(beat.wait(id)["status"], "completed");
    }
    // Replay the journal: at no point were more than two tasks between started and finished.
    let mut running = 0i32;
    let mut peak = 0;
    for e in beat.store().events().unwrap() {
        match e.event.name() {
            "started" => running += 1,
            "finished" | "lost" => running -= 1,
            _ => {}
        }
        peak = peak.max(running);
    }
    assert_eq!(peak, 2, "the two slots were used, and never exceeded");
}

#[test]
fn a_memory_reserve_holds_starts_back_until_the_configuration_allows_them() {
    // A reserve larger than any machine's memory: nothing may start.
    let beat = Beat::with_config(json!({ "memoryReserve": 1u64 << 40 }));
    let id = beat.submit("print finally", &[]);
    let waiting = beat.status(&id);
    assert_eq!(waiting["status"], "queued", "{waiting}");
    assert_eq!(waiting["startedAt"], json!(null));
    // `beat config set` applies to work already waiting, without restarting the daemon.
    let daemon = beat.daemon_pid();
    beat.config_set("memoryReserve", "0");
    assert_eq!(beat.wait(&id)["status"], "completed");
    assert_eq!(beat.daemon_pid(), daemon);
}

#[test]
fn a_reserve_the_machine_covers_lets_work_start() {
    // 1 MiB must stay free: every machine that runs these tests has it, so the starts
    // wait only for the governor to measure the machine (off its actor's thread).
    let beat = Beat::with_config(json!({ "memoryReserve": 1u64 << 20 }));
    let ids: Vec<String> = (0..3)
        .map(|n| beat.submit(&format!("print {n}"), &[]))
        .collect();
    for id in &ids {
        assert_eq!(beat.wait(id)["status"], "completed");
    }
}

fn reason_of(beat: &Beat, id: &str) -> String {
    beat.status(id)["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_task_waiting_for_memory_says_why_and_expected_memory_is_honoured() {
    // The machine covers the 1 MiB reserve, but `fake` is declared to take 1 TiB.
    let beat = Beat::with_config(json!({
        "memoryReserve": 1u64 << 20,
        "agents": { "fake": { "command": [common::FAKE, "{prompt}"], "expectedMemory": 1u64 << 40 } },
    }));
    let id = beat.submit("print finally", &[]);
    wait_until(
        "the waiting task's reason to name the memory it waits for",
        Duration::from_secs(20),
        || reason_of(&beat, &id).contains("1024.0 GiB expected for fake"),
    );
    let waiting = beat.status(&id);
    assert_eq!(waiting["status"], "queued", "{waiting}");
    let reason = waiting["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("waiting for memory: ")
            && reason.contains("1 MiB reserved (memoryReserve)"),
        "{reason}"
    );
    // `beat status` without an id says it too.
    let listing = beat.ok(&["status"]);
    assert!(
        listing.contains("1 queued: waiting for memory: "),
        "{listing}"
    );
    // A realistic expectation lets it start.
    beat.config_set("agents.fake.expectedMemory", "1048576");
    let done = beat.wait(&id);
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["reason"], "exited with code 0", "{done}");
    // Journaled: the wait's reason, then the start that cleared it.
    let names: Vec<&str> = beat
        .store()
        .events()
        .unwrap()
        .iter()
        .map(|e| e.event.name())
        .collect();
    let waiting = names
        .iter()
        .position(|n| *n == "waiting")
        .expect("a waiting event");
    let started = names.iter().position(|n| *n == "started").unwrap();
    assert!(waiting < started, "{names:?}");
}

#[test]
fn when_memory_runs_short_starts_stop_and_nothing_running_is_killed() {
    let beat = Beat::with_config(json!({ "memoryReserve": 1u64 << 20, "maxWorkers": 4 }));
    let go = beat.workdir.path().join("go");
    let first = beat.submit(&format!("await {}; print survived", go.display()), &[]);
    wait_until("the first agent to run", Duration::from_secs(20), || {
        beat.status(&first)["status"] == "running"
    });
    // Available memory falls under the reserve (here the reserve rises above it).
    beat.config_set("memoryReserve", &(1u64 << 40).to_string());
    let second = beat.submit("print second", &[]);
    wait_until(
        "the second task to say why starts stopped",
        Duration::from_secs(20),
        || reason_of(&beat, &second).starts_with("new starts stopped: memory ran short"),
    );
    wait_until("the daemon log to say why", Duration::from_secs(20), || {
        std::fs::read_to_string(beat.path().join("daemon.log"))
            .is_ok_and(|l| l.contains("memory ran short"))
    });
    let listing = beat.ok(&["status"]);
    assert!(
        listing.contains("1 queued: new starts stopped: memory ran short"),
        "{listing}"
    );
    // The running agent was left alone: it finishes its work.
    assert_eq!(beat.status(&first)["status"], "running");
    std::fs::write(&go, "").unwrap();
    let done = beat.wait(&first);
    assert_eq!(done["status"], "completed", "{done}");
    assert!(
        beat.ok(&["logs", &first]).contains("survived"),
        "the agent ran to its end"
    );
    assert_eq!(beat.status(&second)["status"], "queued");
    beat.config_set("memoryReserve", "0");
    assert_eq!(beat.wait(&second)["status"], "completed");
}

/// What runs taught survives a restart: a kind of agent that ran before the daemon
/// restarted is not held to "one alone first" again (two agents that can only finish
/// together do), and the footprint is in `footprints.json` beside the journal.
#[test]
fn learned_footprints_survive_a_daemon_restart() {
    let beat = Beat::with_config(json!({ "memoryReserve": 1u64 << 20, "maxWorkers": 4 }));
    let first = beat.submit("hold 8; print learned", &[]);
    assert_eq!(beat.wait(&first)["status"], "completed");
    let file = beat.path().join("footprints.json");
    wait_until(
        "the learned footprint to be kept",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .is_some_and(|v| v["footprints"]["fake"]["memory"].as_u64() > Some(8 << 20))
        },
    );
    beat.ok(&["daemon", "stop"]);

    let ids = submit_meeting_in_pairs(&beat, 2);
    for id in &ids {
        let t = beat.wait(id);
        assert_eq!(t["status"], "completed", "{t}");
    }
    let alone = beat
        .store()
        .events()
        .unwrap()
        .into_iter()
        .filter(|e| ids.contains(&e.entity_id))
        .filter_map(|e| match e.event {
            backbeat_actors::model::Event::Task(backbeat_actors::model::TaskEvent::Waiting {
                reason,
            }) => reason,
            _ => None,
        })
        .find(|r| r.contains("alone"));
    assert_eq!(
        alone, None,
        "a kind learned before the restart was run alone"
    );
}

/// Submits `n` agents that each wait until two of them run at once (the fake agent's
/// `rendezvous`), so that two can finish only if two slots were granted together.
fn submit_meeting_in_pairs(beat: &Beat, n: usize) -> Vec<String> {
    let meeting = beat.workdir.path().join("meeting");
    std::fs::create_dir(&meeting).unwrap();
    (0..n)
        .map(|i| {
            beat.submit(
                &format!("rendezvous {} 2; print {i}", meeting.display()),
                &[],
            )
        })
        .collect()
}
