//! Retention and restarts (issue 11), through the real `beat`: the first list after a
//! crash already shows the runs that ended while no daemon ran.

mod common;

use std::time::Duration;

use common::{Beat, pid_exists, read_pidfile, wait_until};

fn wait_for_status(beat: &Beat, id: &str, status: &str) {
    wait_until(
        &format!("{id} to be {status}"),
        Duration::from_secs(30),
        || beat.status(id)["status"] == status,
    );
}

#[test]
fn the_first_list_after_a_crash_shows_runs_that_ended_meanwhile_as_finished() {
    let beat = Beat::new();
    let dir = beat.workdir.path();
    let (go, pidfile) = (dir.join("go"), dir.join("agent.pid"));
    let id = beat.submit(
        &format!(
            "pidfile {}; await {}; print done",
            pidfile.display(),
            go.display()
        ),
        &[],
    );
    let (agent, _) = read_pidfile(&pidfile);
    wait_for_status(&beat, &id, "running");
    beat.kill_daemon();
    std::fs::write(&go, "").unwrap();
    // The agent ends, then its shim writes the result (exit.json) and exits.
    let exit_file = beat.run_dir(&id).join("exit.json");
    wait_until("the run to end", Duration::from_secs(30), || {
        !pid_exists(agent) && exit_file.exists()
    });

    // The very first command after the crash starts the daemon and lists.
    let list = beat.json(&["list", "--json"]);
    let task = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} not listed: {list}"));
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(beat.ok(&["logs", &id]), "done\n");
}
