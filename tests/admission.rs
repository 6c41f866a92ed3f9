//! Admission by the ResourceGovernor: never more agents than `maxWorkers`, a start held
//! back while the memory reserve would be crossed, and configuration changes that apply
//! to waiting work without a restart.

mod common;

use common::Beat;
use serde_json::json;

#[test]
fn never_more_agents_at_once_than_max_workers() {
    let beat = Beat::with_config(json!({ "maxWorkers": 2 }));
    // Each agent waits until two agents have run at once: the first two can only
    // finish if both slots were granted together.
    let meeting = beat.workdir.path().join("meeting");
    std::fs::create_dir(&meeting).unwrap();
    let ids: Vec<String> = (0..8)
        .map(|n| {
            beat.submit(
                &format!("rendezvous {} 2; print {n}", meeting.display()),
                &[],
            )
        })
        .collect();
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
