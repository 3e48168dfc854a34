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

#[test]
fn a_baseline_build_is_measured_in_the_same_run_and_compared() {
    let out_dir = tempfile::tempdir().expect("temp dir");
    let bin = tollgate_binary();
    let baseline_plugins = tempfile::tempdir().expect("temp dir");
    std::fs::copy(
        tollgate_bench::scenario::plugin_dist().join("pii-guard.wasm"),
        baseline_plugins.path().join("pii-guard.wasm"),
    )
    .expect("pii-guard.wasm is built (./scripts/build-plugins)");
    let config = BenchConfig {
        duration: Duration::from_millis(500),
        warmup: Duration::from_millis(100),
        rate: 100,
        concurrency: 2,
        max_requests: 40,
        scenarios: vec!["governed".into(), "passthrough".into()],
        out: out_dir.path().join("results.json"),
        tollgate_bin: Some(bin.clone()),
        // The same build as its own baseline: the harness, not the figures, is under test.
        baseline_bin: Some(bin),
        baseline_scenarios: vec!["governed".into()],
        // Its plugins from a directory of their own (here a copy of this tree's).
        baseline_plugins: Some(baseline_plugins.path().to_path_buf()),
        progress: false,
        ..BenchConfig::default()
    };
    let report = tollgate_bench::run(&config).expect("the harness runs");
    assert!(report.all_succeeded(), "failures: {:#?}", report.failures());
    let json = serde_json::to_value(&report).expect("JSON");
    let scenario = |name: &str| {
        json["scenarios"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == name))
            .cloned()
            .expect(name)
    };
    let governed = scenario("governed");
    assert!(governed["baseline"]["peak_rss_kb"].as_u64().unwrap_or(0) > 0);
    let loads = governed["loads"].as_array().expect("loads");
    assert!(loads.len() >= 2, "{governed}");
    for load in loads {
        assert!(load["baseline"]["ok"].as_u64().unwrap_or(0) > 0, "{load}");
        let closed = load["load"]["mode"] == "closed";
        assert_eq!(load["throughput_vs_baseline"].is_f64(), closed, "{load}");
    }
    // c=16 is one of governed's loads: its throughput target against the baseline is checked.
    assert!(
        report
            .targets
            .iter()
            .any(|t| t.what.contains("vs the baseline build (c=16)")),
        "{:#?}",
        report.targets
    );
    // Passthrough was not asked for: no baseline there.
    let passthrough = scenario("passthrough");
    assert!(passthrough["baseline"].is_null());
    for load in passthrough["loads"].as_array().into_iter().flatten() {
        assert!(load["baseline"].is_null(), "{load}");
    }
    let table = report.render();
    assert!(table.contains(" baseline "), "{table}");
    assert!(table.contains("against the baseline build"), "{table}");
}

#[test]
fn a_baseline_build_that_cannot_start_is_a_reported_failure() {
    let out_dir = tempfile::tempdir().expect("temp dir");
    let not_tollgate = out_dir.path().join("not-tollgate");
    std::fs::write(
        &not_tollgate,
        "#!/bin/sh\necho 'no such command' >&2\nexit 3\n",
    )
    .expect("write");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&not_tollgate, std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    }
    let config = BenchConfig {
        duration: Duration::from_millis(300),
        warmup: Duration::from_millis(100),
        rate: 100,
        concurrency: 2,
        max_requests: 20,
        scenarios: vec!["passthrough".into()],
        out: out_dir.path().join("results.json"),
        tollgate_bin: Some(tollgate_binary()),
        baseline_bin: Some(not_tollgate),
        baseline_scenarios: vec!["passthrough".into()],
        progress: false,
        ..BenchConfig::default()
    };
    let report = tollgate_bench::run(&config).expect("the harness runs");
    // tollgate itself was measured; the missing comparison is what fails the run.
    assert_eq!(
        report.scenarios[0].status,
        tollgate_bench::report::ScenarioStatus::Measured
    );
    assert!(report.scenarios[0].loads.iter().all(|c| c.tollgate.ok > 0));
    assert!(!report.all_succeeded());
    let failures = report.failures().join("\n");
    assert!(failures.contains("the baseline build failed"), "{failures}");
    assert!(failures.contains("no such command"), "{failures}");
}
