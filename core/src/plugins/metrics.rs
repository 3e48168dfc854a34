//! Process-wide plugin counters for `/metrics`: decisions by plugin, phase and outcome, failures
//! by kind, and time spent in plugin calls. Labels are bounded: plugin names come from
//! manifests, phases and outcomes are fixed sets.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

#[derive(Default)]
struct Counters {
    /// (plugin, phase, outcome) -> decisions.
    decisions: BTreeMap<(String, &'static str, &'static str), u64>,
    /// (plugin, failure kind) -> failures.
    failures: BTreeMap<(String, &'static str), u64>,
    /// (plugin, phase) -> (calls, microseconds).
    time: BTreeMap<(String, &'static str), (u64, u64)>,
}

static COUNTERS: Mutex<Option<Counters>> = Mutex::new(None);

fn with(f: impl FnOnce(&mut Counters)) {
    let mut guard = COUNTERS.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.get_or_insert_with(Counters::default));
}

/// One decision of `plugin` in `phase`: its outcome, plugin calls made and their total time.
pub fn record(
    plugin: &str,
    phase: &'static str,
    outcome: &'static str,
    calls: u64,
    elapsed_us: i64,
) {
    with(|c| {
        *c.decisions
            .entry((plugin.to_string(), phase, outcome))
            .or_insert(0) += 1;
        let t = c.time.entry((plugin.to_string(), phase)).or_insert((0, 0));
        t.0 += calls;
        t.1 += u64::try_from(elapsed_us).unwrap_or(0);
    });
}

/// One failure of `plugin` (`timeout`, `memory_limit`, `trap`, ...).
pub fn failure(plugin: &str, kind: &'static str) {
    with(|c| {
        *c.failures.entry((plugin.to_string(), kind)).or_insert(0) += 1;
    });
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Appends the plugin metrics in Prometheus text format.
pub fn render(out: &mut String) {
    with(|c| {
        let _ = writeln!(
            out,
            "# HELP tollgate_plugin_decisions_total Guardrail decisions by plugin, phase and outcome.\n\
             # TYPE tollgate_plugin_decisions_total counter"
        );
        for ((plugin, phase, outcome), n) in &c.decisions {
            let _ = writeln!(
                out,
                "tollgate_plugin_decisions_total{{plugin=\"{}\",phase=\"{phase}\",outcome=\"{outcome}\"}} {n}",
                escape(plugin)
            );
        }
        let _ = writeln!(
            out,
            "# HELP tollgate_plugin_failures_total Guardrail traps, timeouts, memory-limit hits and invalid verdicts.\n\
             # TYPE tollgate_plugin_failures_total counter"
        );
        for ((plugin, kind), n) in &c.failures {
            let _ = writeln!(
                out,
                "tollgate_plugin_failures_total{{plugin=\"{}\",kind=\"{kind}\"}} {n}",
                escape(plugin)
            );
        }
        let _ = writeln!(
            out,
            "# HELP tollgate_plugin_call_seconds Time spent in guardrail calls.\n\
             # TYPE tollgate_plugin_call_seconds summary"
        );
        for ((plugin, phase), (calls, us)) in &c.time {
            let labels = format!("plugin=\"{}\",phase=\"{phase}\"", escape(plugin));
            let _ = writeln!(
                out,
                "tollgate_plugin_call_seconds_sum{{{labels}}} {}\ntollgate_plugin_call_seconds_count{{{labels}}} {calls}",
                *us as f64 / 1e6
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_failures_and_time_are_rendered() {
        record("metrics-test", "request", "deny", 1, 40);
        record("metrics-test", "request", "error", 1, 25_000);
        failure("metrics-test", "timeout");
        let mut out = String::new();
        render(&mut out);
        assert!(out.contains(
            "tollgate_plugin_decisions_total{plugin=\"metrics-test\",phase=\"request\",outcome=\"deny\"} 1"
        ));
        assert!(out.contains(
            "tollgate_plugin_failures_total{plugin=\"metrics-test\",kind=\"timeout\"} 1"
        ));
        assert!(out.contains(
            "tollgate_plugin_call_seconds_count{plugin=\"metrics-test\",phase=\"request\"} 2"
        ));
    }
}
