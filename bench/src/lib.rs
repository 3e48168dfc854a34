//! tollgate-bench: measures what tollgate adds to a call, against the same mock provider called
//! directly, in one process tree and one run.
//!
//! For every selected scenario: the mock (in-process, its own runtime) is measured directly
//! under each of the scenario's loads; then the real `tollgate` binary is started on the
//! scenario's policy directory with a fresh SQLite store and key, and measured under the same
//! loads; its RSS is sampled throughout. The result is a [`Report`]: printed as a table and
//! written as JSON so runs can be compared.

pub mod driver;
pub mod families;
pub mod gateway;
pub mod nginx;
pub mod report;
pub mod scenario;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::Serialize;

use driver::{Load, PhaseOptions, PhaseResult, Target};
use gateway::{Gateway, GatewayStats, SharedStore};
use report::{Comparison, Drift, ScenarioReport, ScenarioStatus};
use scenario::{Entry, Scenario, StoreKind, Upstream};

pub use report::Report;

/// Everything one run needs.
#[derive(Debug, Clone, Serialize)]
pub struct BenchConfig {
    /// Measured time of each phase.
    pub duration: Duration,
    /// Unrecorded time at the same load before each phase.
    pub warmup: Duration,
    /// Open-loop rate (requests per second).
    pub rate: u32,
    /// Open-loop rate of streaming scenarios; `None` uses `rate`.
    pub stream_rate: Option<u32>,
    /// Closed-loop concurrency.
    pub concurrency: usize,
    /// Measured requests per phase at most.
    pub max_requests: u64,
    /// Scenario names; empty means all.
    pub scenarios: Vec<String>,
    /// Where the JSON report goes.
    pub out: PathBuf,
    /// Long mode: the gateway's open-loop phases run for `long_duration`, and the first and
    /// last window of latency and RSS are compared.
    pub long: bool,
    /// Measured time of the gateway's open-loop phases in long mode.
    pub long_duration: Duration,
    /// Width of the latency/RSS windows.
    pub window: Duration,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// The `tollgate` binary; `None` looks for it (see [`gateway::locate_binary`]).
    pub tollgate_bin: Option<PathBuf>,
    /// An earlier `tollgate` build measured in the same run under the same loads, in
    /// `baseline_scenarios`; `None`: no baseline.
    pub baseline_bin: Option<PathBuf>,
    /// The scenarios the baseline build is measured in.
    pub baseline_scenarios: Vec<String>,
    /// Where the baseline build's plugin components are (built from its own tree); `None`:
    /// the same `plugins/dist/` as tollgate's.
    pub baseline_plugins: Option<PathBuf>,
    /// Worker threads of the load driver's runtime.
    pub driver_threads: usize,
    /// Worker threads of the in-process mock's runtime.
    pub mock_threads: usize,
    /// Print progress on stderr.
    pub progress: bool,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            rate: 1000,
            stream_rate: None,
            concurrency: 32,
            max_requests: 1_000_000,
            scenarios: Vec::new(),
            out: PathBuf::from("target/bench/results.json"),
            long: false,
            long_duration: Duration::from_secs(60),
            window: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            tollgate_bin: None,
            baseline_bin: None,
            baseline_scenarios: vec!["governed".into()],
            baseline_plugins: None,
            driver_threads: 1,
            mock_threads: 1,
            progress: true,
        }
    }
}

impl BenchConfig {
    fn phase_options(&self, load: Load, through_gateway: bool) -> PhaseOptions {
        let open = matches!(load, Load::Open { .. });
        PhaseOptions {
            duration: if self.long && through_gateway && open {
                self.long_duration
            } else {
                self.duration
            },
            warmup: self.warmup,
            max_requests: self.max_requests,
            timeout: self.request_timeout,
            window: if open { self.window } else { Duration::ZERO },
        }
    }

    fn say(&self, message: impl AsRef<str>) {
        if self.progress {
            eprintln!("tollgate-bench: {}", message.as_ref());
        }
    }
}

/// Picks the scenarios named in `names` (all when empty), in table order.
pub fn select(names: &[String]) -> anyhow::Result<Vec<Entry>> {
    let all = scenario::all();
    if names.is_empty() {
        return Ok(all);
    }
    for name in names {
        anyhow::ensure!(
            all.iter().any(|e| e.name() == name),
            "unknown scenario '{name}'; known: {}",
            all.iter().map(Entry::name).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(all
        .into_iter()
        .filter(|e| names.iter().any(|n| n == e.name()))
        .collect())
}

/// Runs the benchmark: builds its own runtimes, so call it from plain (non-async) code.
pub fn run(config: &BenchConfig) -> anyhow::Result<Report> {
    let entries = select(&config.scenarios)?;
    let bin = gateway::locate_binary(config.tollgate_bin.as_deref())?;
    let mock_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.mock_threads.max(1))
        .thread_name("bench-mock")
        .enable_all()
        .build()
        .context("cannot start the mock's runtime")?;
    let driver_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.driver_threads.max(1))
        .thread_name("bench-driver")
        .enable_all()
        .build()
        .context("cannot start the driver's runtime")?;
    let mock = mock_rt
        .block_on(mock_upstream::start(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            mock_upstream::MockConfig {
                latency: Duration::ZERO,
                stream_chunks: 20,
                record: false,
            },
        ))
        .context("cannot start the mock upstream")?;
    let upstream = Upstream {
        base_url: mock.base_url(),
    };
    config.say(format!(
        "mock upstream on {}, tollgate binary {}",
        mock.addr,
        bin.display()
    ));

    let mut scenarios = Vec::new();
    for entry in entries {
        match entry {
            Entry::NotBuilt { name, summary } => scenarios.push(ScenarioReport {
                name: name.to_string(),
                summary: summary.to_string(),
                status: ScenarioStatus::NotAvailable,
                note: Some("not available yet (capability not built)".into()),
                loads: Vec::new(),
                gateway: None,
                replicas: Vec::new(),
                baseline: None,
                baseline_error: None,
                drift: Vec::new(),
            }),
            Entry::Ready(scenario) => {
                let measured = run_scenario(
                    config,
                    &bin,
                    scenario.as_ref(),
                    mock.addr,
                    &upstream,
                    &driver_rt,
                );
                scenarios.push(measured.unwrap_or_else(|e| {
                    config.say(format!("{}: failed: {e:#}", scenario.name()));
                    ScenarioReport {
                        name: scenario.name().to_string(),
                        summary: scenario.summary().to_string(),
                        status: ScenarioStatus::Failed,
                        note: Some(format!("{e:#}")),
                        loads: Vec::new(),
                        gateway: None,
                        replicas: Vec::new(),
                        baseline: None,
                        baseline_error: None,
                        drift: Vec::new(),
                    }
                }));
            }
        }
    }
    driver_rt.shutdown_timeout(Duration::from_secs(1));
    mock_rt.shutdown_timeout(Duration::from_secs(1));

    let report = Report::new(config, &bin, scenarios);
    write_json(&report, &config.out)?;
    Ok(report)
}

/// Runs one phase against `targets` (one, or the replicas of a gateway sharing the load).
fn run_phase(
    config: &BenchConfig,
    rt: &tokio::runtime::Runtime,
    targets: &[Arc<Target>],
    load: Load,
    label: &str,
) -> anyhow::Result<PhaseResult> {
    let options = config.phase_options(
        load,
        label.ends_with("tollgate") || label.ends_with("baseline"),
    );
    config.say(format!(
        "{label} {} for {:?} (+{:?} warm-up)",
        load.label(),
        options.duration,
        options.warmup
    ));
    let result = rt.block_on(driver::run_phase(targets, load, options))?;
    config.say(format!(
        "{label} {}: {}/{} ok{}, {:.0} rps, p50 {:.3} ms, p99 {:.3} ms",
        load.label(),
        result.ok,
        result.requests,
        if result.ok_per_target.len() > 1 {
            format!(" (per replica: {:?})", result.ok_per_target)
        } else {
            String::new()
        },
        result.rps,
        result.latency.p50_us as f64 / 1000.0,
        result.latency.p99_us as f64 / 1000.0
    ));
    Ok(result)
}

fn run_scenario(
    config: &BenchConfig,
    bin: &Path,
    scenario: &dyn Scenario,
    mock: SocketAddr,
    upstream: &Upstream,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<ScenarioReport> {
    let name = scenario.name();
    let loads = scenario.loads(config);
    let direct = Arc::new(Target::new(mock, scenario.direct_request(), None)?);
    let mut direct_results = Vec::new();
    for &load in &loads {
        direct_results.push(run_phase(
            config,
            rt,
            std::slice::from_ref(&direct),
            load,
            &format!("{name} direct"),
        )?);
    }

    // The pure-proxy floor, for the scenarios a plain proxy can serve (no governance to do).
    let mut nginx_results = Vec::new();
    if scenario.nginx_baseline() {
        match nginx::Nginx::start(mock)? {
            Some(nginx) => {
                let target = Arc::new(Target::new(nginx.addr, scenario.direct_request(), None)?);
                for &load in &loads {
                    let cpu_before = nginx.cpu_time();
                    let mut result = run_phase(
                        config,
                        rt,
                        std::slice::from_ref(&target),
                        load,
                        &format!("{name} nginx"),
                    )?;
                    let sent = result.requests + result.warmup_requests;
                    if let (Some(before), Some(after)) = (cpu_before, nginx.cpu_time())
                        && sent > 0
                    {
                        let used = after.saturating_sub(before).as_secs_f64() * 1e6;
                        result.gateway_cpu_us_per_request = Some(used / sent as f64);
                    }
                    nginx_results.push(Some(result));
                }
            }
            None => config.say(format!(
                "{name}: nginx is not installed (scripts/bench installs it): no nginx baseline"
            )),
        }
    }
    nginx_results.resize_with(loads.len(), || None);

    let tollgate = Running::start(
        config,
        &Build {
            bin,
            label: "tollgate",
            plugins: None,
        },
        scenario,
        upstream,
    )?;
    // The earlier build, same loads, same mock, same run, its phases interleaved with
    // tollgate's (one load through tollgate, then the same load through it) so that both meet
    // the same moment of a shared, noisy machine. Its failure is reported, not fatal: an old
    // build may not know what a newer scenario needs.
    let mut baseline_note = None;
    let mut baseline = None;
    if let Some(baseline_bin) = &config.baseline_bin
        && config.baseline_scenarios.iter().any(|s| s == name)
    {
        let build = Build {
            bin: baseline_bin,
            label: "baseline",
            plugins: config.baseline_plugins.as_deref(),
        };
        match Running::start(config, &build, scenario, upstream) {
            Ok(running) => baseline = Some(running),
            Err(e) => baseline_note = Some(format!("the baseline build failed: {e:#}")),
        }
    }
    let mut gateway_results = Vec::new();
    let mut baseline_results: Vec<Option<PhaseResult>> = Vec::new();
    for &load in &loads {
        gateway_results.push(tollgate.phase(config, rt, load)?);
        if let Some(running) = &baseline {
            match running.phase(config, rt, load) {
                Ok(result) => baseline_results.push(Some(result)),
                Err(e) => {
                    baseline_note = Some(format!("the baseline build failed: {e:#}"));
                    baseline_results.clear();
                    baseline = None;
                }
            }
        }
    }
    let (stats, replicas) = by_peak(tollgate.stop(config)?)?;
    let baseline_stats = match baseline.map(|b| b.stop(config)).transpose() {
        Ok(stats) => stats.map(by_peak).transpose()?.map(|(max, _)| max),
        Err(e) => {
            baseline_note = Some(format!("the baseline build failed: {e:#}"));
            baseline_results.clear();
            None
        }
    };
    if let Some(note) = &baseline_note {
        config.say(format!("{name}: {note}"));
    }
    baseline_results.resize_with(loads.len(), || None);

    let drift = gateway_results
        .iter()
        .filter_map(|r| Drift::of(r, &stats))
        .collect();
    let comparisons = loads
        .iter()
        .zip(direct_results)
        .zip(gateway_results)
        .zip(nginx_results)
        .zip(baseline_results)
        .map(|((((&load, direct), tollgate), nginx), baseline)| {
            Comparison::new(load, direct, tollgate)
                .with_nginx(nginx)
                .with_baseline(baseline)
        })
        .collect();

    Ok(ScenarioReport {
        name: name.to_string(),
        summary: scenario.summary().to_string(),
        status: ScenarioStatus::Measured,
        note: replicas
            .iter()
            .chain(replicas.is_empty().then_some(&stats))
            .find(|s| !s.clean_exit)
            .map(|s| format!("tollgate did not stop cleanly: {}", s.exit_status)),
        loads: comparisons,
        gateway: Some(stats),
        replicas,
        baseline: baseline_stats,
        baseline_error: baseline_note,
        drift,
    })
}

/// A gateway build to measure: its binary, its name in progress lines and errors (`tollgate`,
/// `baseline`), and where its plugin components come from (`None`: `plugins/dist/`).
struct Build<'a> {
    bin: &'a Path,
    label: &'static str,
    plugins: Option<&'a Path>,
}

/// The gateway whose peak RSS is the highest, and with several replicas all of them.
fn by_peak(mut stats: Vec<GatewayStats>) -> anyhow::Result<(GatewayStats, Vec<GatewayStats>)> {
    let all = if stats.len() > 1 {
        stats.clone()
    } else {
        Vec::new()
    };
    stats.sort_by_key(|s| s.peak_rss_kb);
    let max = stats.pop().context("no gateway was started")?;
    Ok((max, all))
}

/// A started gateway build (one process, or the scenario's replicas on one shared store) and
/// the request it is measured with.
struct Running {
    /// One per replica; they stop before the shared store is dropped (field order).
    gateways: Vec<Gateway>,
    /// The target of each replica, in the same order.
    through: Vec<Arc<Target>>,
    /// The database (and key) the replicas share, when there are several.
    shared: Option<SharedStore>,
    /// Whether the store is PostgreSQL: its server's CPU per request is measured too.
    postgres: bool,
    label: String,
}

impl Running {
    /// Starts `build` on the scenario's policies: one gateway, or with several replicas one
    /// PostgreSQL database and key created once and every replica started on it, each in a temp
    /// dir (policy copy, data dir, log) of its own.
    fn start(
        config: &BenchConfig,
        build: &Build<'_>,
        scenario: &dyn Scenario,
        upstream: &Upstream,
    ) -> anyhow::Result<Self> {
        let name = scenario.name();
        let replicas = scenario.replicas();
        config.say(format!(
            "{name}: starting {}{} ({})",
            build.label,
            if replicas > 1 {
                format!(", {replicas} replicas on one PostgreSQL database")
            } else {
                String::new()
            },
            build.bin.display()
        ));
        let shared = if replicas > 1 {
            anyhow::ensure!(
                scenario.store() == StoreKind::Postgres,
                "{name}: replicas share a PostgreSQL store only"
            );
            Some(SharedStore::postgres(build.bin, scenario)?)
        } else {
            None
        };
        let mut gateways = Vec::with_capacity(replicas);
        let mut through = Vec::with_capacity(replicas);
        for _ in 0..replicas {
            let gateway = Gateway::start(
                build.bin,
                scenario,
                upstream,
                build.plugins,
                shared.as_ref(),
            )?;
            through.push(Arc::new(Target::new(
                gateway.addr,
                scenario.gateway_request(),
                Some(&gateway.secret),
            )?));
            gateways.push(gateway);
        }
        Ok(Self {
            gateways,
            through,
            shared,
            postgres: scenario.store() == StoreKind::Postgres,
            label: format!("{name} {}", build.label),
        })
    }

    /// CPU time each gateway has used so far (`None` if any cannot be read).
    fn cpu_times(&self) -> Option<Vec<Duration>> {
        self.gateways.iter().map(Gateway::cpu_time).collect()
    }

    /// Holds the gateways have taken in the store so far, summed (`None` if any cannot say).
    fn store_holds(&self) -> Option<u64> {
        self.gateways
            .iter()
            .map(|g| g.metric("tollgate_budget_store_holds_total"))
            .sum::<Option<f64>>()
            .map(|n| n as u64)
    }

    /// Measures one load, with the gateways' CPU per request (summed over the replicas) and,
    /// on PostgreSQL, the server's.
    fn phase(
        &self,
        config: &BenchConfig,
        rt: &tokio::runtime::Runtime,
        load: Load,
    ) -> anyhow::Result<PhaseResult> {
        let pg_before = self.postgres.then(gateway::postgres_cpu_time).flatten();
        let holds_before = self.postgres.then(|| self.store_holds()).flatten();
        let cpu_before = self.cpu_times();
        match run_phase(config, rt, &self.through, load, &self.label) {
            Ok(mut result) => {
                let sent = result.requests + result.warmup_requests;
                let per_request = |used: Duration| used.as_secs_f64() * 1e6 / sent.max(1) as f64;
                if let (Some(before), Some(after)) = (cpu_before, self.cpu_times())
                    && sent > 0
                {
                    let used: Vec<f64> = after
                        .iter()
                        .zip(&before)
                        .map(|(a, b)| per_request(a.saturating_sub(*b)))
                        .collect();
                    result.gateway_cpu_us_per_request = Some(used.iter().sum());
                    if used.len() > 1 {
                        result.replica_cpu_us_per_request = used;
                    }
                }
                if let (Some(before), Some(after)) = (
                    pg_before,
                    self.postgres.then(gateway::postgres_cpu_time).flatten(),
                ) && sent > 0
                {
                    result.postgres_cpu_us_per_request =
                        Some(per_request(after.saturating_sub(before)));
                }
                if let (Some(before), Some(after)) = (holds_before, self.store_holds()) {
                    result.store_holds = Some(after.saturating_sub(before));
                }
                Ok(result)
            }
            Err(e) => {
                let logs: Vec<String> = self
                    .gateways
                    .iter()
                    .enumerate()
                    .map(|(i, g)| self.replica_log(i, g))
                    .collect();
                Err(e.context(logs.join("\n")))
            }
        }
    }

    /// `<label>'s log:` (or `<label> replica N's log:`) and the last lines of it.
    fn replica_log(&self, index: usize, gateway: &Gateway) -> String {
        let who = if self.gateways.len() > 1 {
            format!("{} replica {}", self.label, index + 1)
        } else {
            self.label.clone()
        };
        format!("{who}'s log:\n{}", gateway.log_tail())
    }

    /// Stops the gateways (SIGTERM, drain), then drops the shared store; returns each
    /// gateway's memory figures.
    fn stop(mut self, config: &BenchConfig) -> anyhow::Result<Vec<GatewayStats>> {
        let gateways = std::mem::take(&mut self.gateways);
        let mut all = Vec::with_capacity(gateways.len());
        for (i, gateway) in gateways.into_iter().enumerate() {
            let log = self.replica_log(i, &gateway);
            let stats = gateway.stop()?;
            if !stats.clean_exit {
                config.say(format!(
                    "{} did not stop cleanly ({}); {log}",
                    self.label, stats.exit_status
                ));
            }
            all.push(stats);
        }
        drop(self.shared.take());
        Ok(all)
    }
}

fn write_json(report: &Report, out: &Path) -> anyhow::Result<()> {
    if let Some(parent) = out.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let json = serde_json::to_string_pretty(report).context("cannot encode the report")?;
    std::fs::write(out, json + "\n").with_context(|| format!("cannot write {}", out.display()))
}

/// Milliseconds since the Unix epoch.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
