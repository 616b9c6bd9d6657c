//! The served hub runs with glibc's per-thread malloc caches off (`main.rs`,
//! `without_thread_caches`): it starts itself again, in the same process, with
//! `glibc.malloc.tcache_count=0` added to `GLIBC_TUNABLES`, keeping tunables it was given, and
//! leaving an operator's own `tcache_count` alone. (That other tunables are kept beside it is not
//! checked here: glibc ends each tunable's value in place as it reads them, so the process's
//! environment shows only the first of several; `strace -e execve` shows the whole value.)
#![cfg(all(target_os = "linux", target_env = "gnu"))]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers may panic"
)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// Starts a hub with `tunables` as its `GLIBC_TUNABLES` (none: unset) and returns the
/// `GLIBC_TUNABLES` its process, the one that was spawned, has once it is ready.
fn tunables_of_ready_hub(tunables: Option<&str>) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "[data]\ndir = {:?}\n[api]\nlisten = \"127.0.0.1:0\"\n[mqtt]\nlisten = \"127.0.0.1:0\"\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_hub"));
    command
        .arg("--config")
        .arg(&config)
        .env_remove("RUST_LOG")
        .env_remove("GLIBC_TUNABLES")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(tunables) = tunables {
        command.env("GLIBC_TUNABLES", tunables);
    }
    let mut child = command.spawn().expect("start hub");
    let ready = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .any(|line| line.starts_with("hub ready"));
    assert!(ready, "the hub did not become ready");
    let environ = std::fs::read(format!("/proc/{}/environ", child.id())).unwrap();
    let found = environ
        .split(|b| *b == 0)
        .filter_map(|entry| std::str::from_utf8(entry).ok())
        .find_map(|entry| entry.strip_prefix("GLIBC_TUNABLES="))
        .map(str::to_owned);
    let stopped = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    assert!(
        child.wait().unwrap().success(),
        "the hub did not stop cleanly"
    );
    found
}

#[test]
fn the_hub_turns_the_thread_caches_off_in_its_own_process() {
    assert_eq!(
        tunables_of_ready_hub(None).as_deref(),
        Some("glibc.malloc.tcache_count=0")
    );
}

#[test]
fn an_operators_own_tcache_count_wins() {
    assert_eq!(
        tunables_of_ready_hub(Some("glibc.malloc.tcache_count=3")).as_deref(),
        Some("glibc.malloc.tcache_count=3")
    );
}
