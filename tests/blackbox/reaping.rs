//! No zombies, no orphans: tandem reaps every process that comes to it, and a SIGKILLed tandem
//! takes the app's whole process group with it.
use std::process::Command;

use nix::sys::signal::Signal;

use crate::support::{children, eventually, group_members, proc_state, wait_file, Tandem};

/// An app that leaves 200 orphaned, short-lived grandchildren, then waits for `done`.
fn orphan_maker(dir: &std::path::Path) -> String {
    format!(
        "cd {}; i=0; while [ $i -lt 200 ]; do (sleep 0.01 &); i=$((i+1)); done; touch spawned; \
         while [ ! -e done ]; do sleep 0.05; done",
        dir.display()
    )
}

fn zombies_under(pid: i32) -> usize {
    children(pid)
        .into_iter()
        .filter(|c| proc_state(*c) == Some('Z'))
        .count()
}

#[test]
fn orphaned_grandchildren_are_reaped() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Tandem::spawn(&["--", "sh", "-c", &orphan_maker(dir.path())]);
    wait_file(&dir.path().join("spawned"));
    eventually("no zombie children under tandem", || {
        zombies_under(t.pid()) == 0
    });
    std::fs::write(dir.path().join("done"), "").unwrap();
    assert_eq!(t.wait_code(), 0);
    let reaped = t.wait_event("exit")["orphans_reaped"].as_u64().unwrap();
    assert!(reaped >= 200, "tandem reaped only {reaped} orphans");
}

#[test]
fn reaps_as_pid_1_in_a_pid_namespace() {
    let probe = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .status();
    if !crate::support::can_run(
        probe.is_ok_and(|s| s.success()),
        "unshare --pid is not available here",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut t = Tandem::spawn_cmd(
        Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--mount-proc",
                crate::support::bin(),
                "--",
            ])
            .args(["sh", "-c", &orphan_maker(dir.path())]),
    );
    wait_file(&dir.path().join("spawned"));
    let tandem = children(t.pid());
    assert_eq!(
        tandem.len(),
        1,
        "unshare should have one child (tandem): {tandem:?}"
    );
    eventually("no zombies under tandem as PID 1", || {
        zombies_under(tandem[0]) == 0
    });
    std::fs::write(dir.path().join("done"), "").unwrap();
    assert_eq!(t.wait_code(), 0);
    let reaped = t.wait_event("exit")["orphans_reaped"].as_u64().unwrap();
    assert!(
        reaped >= 200,
        "tandem as PID 1 reaped only {reaped} orphans"
    );
}

#[test]
fn sigkill_of_tandem_leaves_no_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "cd {}; sleep 1000 & sleep 1000 & touch ready; wait",
        dir.path().display()
    );
    let mut t = Tandem::spawn(&["--", "sh", "-c", &script]);
    wait_file(&dir.path().join("ready"));
    let pgid = t.app_pid();
    let members = group_members(pgid);
    assert!(
        members.len() >= 3,
        "app group should hold sh and two sleeps: {members:?}"
    );
    t.signal(Signal::SIGKILL);
    t.wait();
    eventually("the app's process group is gone", || {
        group_members(pgid).is_empty()
    });
}
