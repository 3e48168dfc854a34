//! Smoke test of the benchmark harness: a few hundred requests through the real (debug)
//! `tollgate` binary and straight to the mock. Asserts only that every request succeeded and the
//! JSON report was written; timings are never asserted (debug builds on a shared machine).

// Harness helpers outside `#[test]` functions fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use tollgate_bench::BenchConfig;

/// `target/<profile>/tollgate`, next to this test's `deps/` directory, unless `TOLLGATE_BIN`.
fn tollgate_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TOLLGATE_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let bin = profile_dir.join("tollgate");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p tollgate` (`cargo test --workspace` builds it), \
         or set TOLLGATE_BIN",
        bin.display()
    );
    bin
}

/// Whether the PostgreSQL at 127.0.0.1:5432 is usable (governed-postgres needs it).
fn postgres_available() -> bool {
    std::process::Command::new("psql")
        .args([
            "postgres://postgres@127.0.0.1:5432/test",
            "-q",
            "-c",
            "SELECT 1",
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn harness_measures_every_runnable_scenario_and_writes_the_report() {
    let postgres = postgres_available();
    if !postgres {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED governed-postgres in the bench smoke run: PostgreSQL is not reachable at 127.0.0.1:5432"
        );
    }
    let out_dir = tempfile::tempdir().expect("temp dir");
    let out = out_dir.path().join("results.json");
    let config = BenchConfig {
        duration: Duration::from_millis(600),
        warmup: Duration::from_millis(200),
        rate: 100,
        concurrency: 2,
        max_requests: 60,
        scenarios: if postgres {
            Vec::new()
        } else {
            [
                "passthrough",
                "streaming",
                "governed",
                "governed-streaming",
                "mcp",
                "anthropic",
                "anthropic-stream",
                "translated",
                "translated-stream",
            ]
            .map(String::from)
            .to_vec()
        },
        out: out.clone(),
        tollgate_bin: Some(tollgate_binary()),
        progress: false,
        ..BenchConfig::default()
    };
    let report = tollgate_bench::run(&config).expect("the harness runs");

    assert!(report.all_succeeded(), "failures: {:#?}", report.failures());
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out).expect("report written")).expect("JSON");
    let scenarios = json["scenarios"].as_array().expect("scenarios");
    let status = |name: &str| {
        scenarios
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["status"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(status("passthrough").as_deref(), Some("measured"));
    assert_eq!(status("streaming").as_deref(), Some("measured"));
    assert_eq!(status("governed").as_deref(), Some("measured"));
    if postgres {
        assert_eq!(status("governed-postgres").as_deref(), Some("measured"));
    }
    for name in [
        "governed-streaming",
        "mcp",
        "anthropic",
        "anthropic-stream",
        "translated",
        "translated-stream",
    ] {
        assert_eq!(status(name).as_deref(), Some("measured"), "{name}");
    }
    let passthrough = scenarios
        .iter()
        .find(|s| s["name"] == "passthrough")
        .expect("passthrough");
    // open loop, closed c=1, closed c=concurrency
    assert_eq!(passthrough["loads"].as_array().map(Vec::len), Some(3));
    if tollgate_bench::nginx::locate().is_some() {
        for load in passthrough["loads"].as_array().into_iter().flatten() {
            assert!(
                load["nginx"]["ok"].as_u64().unwrap_or(0) > 0,
                "nginx baseline not measured: {load}"
            );
        }
        assert!(report.render().contains(" nginx "));
    } else {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED the nginx baseline in the bench smoke run: nginx is not installed (scripts/bench installs it)"
        );
    }
    assert!(passthrough["gateway"]["peak_rss_kb"].as_u64().unwrap_or(0) > 0);
    assert!(report.render().contains("translated-stream"));
}
