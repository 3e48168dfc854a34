//! The real `tollgate` binary as a child process: policy directory and SQLite store in a temp
//! dir, a bench key, `tollgate serve` on a free loopback port, RSS sampling from `/proc`, and a
//! graceful SIGTERM stop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::scenario::{PROVIDER_KEY_ENV, Scenario, StoreKind, Upstream};

/// How long `tollgate serve` may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a SIGTERM'd gateway may take to drain and flush before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// RSS sampling period.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// Finds the `tollgate` binary: `$TOLLGATE_BIN`, else next to this executable (or one level up,
/// for test executables in `target/<profile>/deps/`).
pub fn locate_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        anyhow::ensure!(
            path.is_file(),
            "tollgate binary {} does not exist",
            path.display()
        );
        return Ok(path.to_path_buf());
    }
    if let Some(path) = std::env::var_os("TOLLGATE_BIN") {
        let path = PathBuf::from(path);
        anyhow::ensure!(
            path.is_file(),
            "TOLLGATE_BIN={} does not exist",
            path.display()
        );
        return Ok(path);
    }
    let exe = std::env::current_exe().context("cannot find the bench executable")?;
    let mut candidates = Vec::new();
    if let Some(dir) = exe.parent() {
        candidates.push(dir.join("tollgate"));
        if let Some(up) = dir.parent() {
            candidates.push(up.join("tollgate"));
        }
    }
    candidates.into_iter().find(|p| p.is_file()).with_context(|| {
        format!(
            "no tollgate binary next to {}: build it first with `cargo build --release -p tollgate` \
             (or `cargo build -p tollgate` for debug runs), or set TOLLGATE_BIN",
            exe.display()
        )
    })
}

/// One RSS sample of the gateway process.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RssSample {
    /// Seconds since the gateway was started.
    pub t_s: f64,
    /// `VmRSS`, KiB.
    pub rss_kb: u64,
    /// `VmHWM` (peak RSS so far), KiB.
    pub hwm_kb: u64,
    #[serde(skip)]
    at: Instant,
}

/// Reads `VmRSS` and `VmHWM` (KiB) of `pid`.
pub fn read_rss(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU time (user + system) `pid` has used so far, from `/proc/PID/stat`.
pub fn read_cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at field 3 (state);
    // utime and stime are fields 14 and 15, in USER_HZ (100 per second on Linux).
    let mut fields = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// CPU time (user + system) used so far by every process whose `/proc/PID/comm` is `comm`,
/// summed; `None` where `/proc` cannot be read or no such process runs. Processes that exit
/// between two readings drop out of the sum, so a difference of two readings is a lower bound.
pub fn processes_cpu_time(comm: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut found = false;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(name) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
            continue;
        };
        if name.trim_end() != comm {
            continue;
        }
        if let Some(cpu) = read_cpu_time(pid) {
            total += cpu;
            found = true;
        }
    }
    found.then_some(total)
}

/// CPU time the local PostgreSQL server (postmaster and backends, every process named
/// `postgres`) has used so far; `None` without `/proc` or without a local server.
pub fn postgres_cpu_time() -> Option<Duration> {
    processes_cpu_time("postgres")
}

/// RSS samples taken every [`SAMPLE_EVERY`] by a background thread.
struct Sampler {
    samples: Arc<Mutex<Vec<RssSample>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: u32, origin: Instant) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let samples = samples.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some((rss_kb, hwm_kb)) = read_rss(pid)
                        && let Ok(mut samples) = samples.lock()
                    {
                        let at = Instant::now();
                        samples.push(RssSample {
                            t_s: at.duration_since(origin).as_secs_f64(),
                            rss_kb,
                            hwm_kb,
                            at,
                        });
                    }
                    std::thread::sleep(SAMPLE_EVERY);
                }
            })
        };
        Self {
            samples,
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<RssSample> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.samples.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// What the gateway's memory did over its run.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayStats {
    /// `VmHWM` just before the stop: the peak RSS of the whole run, KiB.
    pub peak_rss_kb: u64,
    /// `VmRSS` at the last sample, KiB.
    pub final_rss_kb: u64,
    /// Every sample.
    pub samples: Vec<RssSample>,
    /// Whether the gateway exited by itself after SIGTERM (`false`: it had to be killed).
    pub clean_exit: bool,
    /// The exit status.
    pub exit_status: String,
}

impl GatewayStats {
    /// Mean `VmRSS` (KiB) of the samples taken between `from` and `to`.
    pub fn mean_rss_between(&self, from: Instant, to: Instant) -> Option<u64> {
        let within: Vec<u64> = self
            .samples
            .iter()
            .filter(|s| s.at >= from && s.at <= to)
            .map(|s| s.rss_kb)
            .collect();
        (!within.is_empty()).then(|| within.iter().sum::<u64>() / within.len() as u64)
    }
}

/// A running gateway.
pub struct Gateway {
    child: Option<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The bench key's secret.
    pub secret: String,
    sampler: Option<Sampler>,
    stderr_path: PathBuf,
    _dir: tempfile::TempDir,
    /// Dropped after the gateway (fields drop in order).
    _postgres: Option<PgDatabase>,
}

/// The value of the unlabelled series `name` in a Prometheus text page.
fn metric_value(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A PostgreSQL database created for one scenario and dropped after it.
pub struct PgDatabase {
    /// Connection URL.
    pub url: String,
    name: String,
}

const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/test";

fn psql(sql: &str) -> anyhow::Result<()> {
    let out = Command::new("psql")
        .args([PG_ADMIN, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .output()
        .context("psql is not available (PostgreSQL scenarios need it)")?;
    if !out.status.success() {
        bail!(
            "PostgreSQL is not usable at 127.0.0.1:5432: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl PgDatabase {
    /// Creates a fresh database.
    pub fn create() -> anyhow::Result<PgDatabase> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!("tg_bench_{}_{nanos}", std::process::id());
        psql(&format!("CREATE DATABASE {name}"))?;
        Ok(PgDatabase {
            url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
            name,
        })
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

/// A store several gateways (replicas) share: one fresh PostgreSQL database and one key in it,
/// created once; the database is dropped when this is, after the gateways have stopped.
pub struct SharedStore {
    /// The database URL every replica is started with.
    pub url: String,
    /// The bench key's secret, valid on every replica (keys live in the shared database).
    pub secret: String,
    _postgres: PgDatabase,
}

impl SharedStore {
    /// Creates a fresh PostgreSQL database and the scenario's bench key in it.
    pub fn postgres(bin: &Path, scenario: &dyn Scenario) -> anyhow::Result<Self> {
        let db = PgDatabase::create()?;
        let secret = create_key(bin, scenario, &db.url)?;
        Ok(Self {
            url: db.url.clone(),
            secret,
            _postgres: db,
        })
    }
}

/// `tollgate keys create` with the scenario's grants on `database`; returns the secret.
fn create_key(bin: &Path, scenario: &dyn Scenario, database: &str) -> anyhow::Result<String> {
    let mut create = Command::new(bin);
    create.args(["keys", "create", "--name", "bench"]);
    if scenario.key_mcp() {
        create.args(["--mcp", "*"]);
    }
    let created = create
        .arg("--models")
        .arg(scenario.key_models())
        .args(["--json", "--database", database])
        .env("RUST_LOG", "warn")
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    if !created.status.success() {
        bail!(
            "tollgate keys create failed ({}): {}",
            created.status,
            String::from_utf8_lossy(&created.stderr)
        );
    }
    let key: serde_json::Value = serde_json::from_slice(&created.stdout)
        .context("tollgate keys create --json printed no JSON")?;
    Ok(key
        .get("secret")
        .and_then(serde_json::Value::as_str)
        .context("tollgate keys create --json printed no secret")?
        .to_string())
}

/// Connection threads of each of `replicas` gateways side by side on this machine: its share of
/// the CPUs (at least one), as a replica given that many CPUs (a container's CPU limit) would
/// choose by itself. `None` for a single gateway: it takes its default, one per CPU. Two
/// replicas with a thread per CPU each ran four event loops on two cores, and a request cost
/// their connection threads about a fifth more CPU (`docs/performance.md`, fifteenth round).
pub fn replica_threads(replicas: usize) -> Option<usize> {
    if replicas <= 1 {
        return None;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    Some((cpus / replicas).max(1))
}

impl Gateway {
    /// Writes the scenario's policy directory in a temp dir of its own and starts
    /// `tollgate serve` on it. The store: `shared` when given (a replica: the shared database and
    /// its key), else the scenario's own (a fresh SQLite file in the temp dir or a fresh
    /// PostgreSQL database, dropped with the gateway) with a key created in it.
    /// `plugins`: where the scenario's plugin components come from instead of
    /// `plugins/dist/` (a build of another tree needs the plugins built from that tree).
    pub fn start(
        bin: &Path,
        scenario: &dyn Scenario,
        upstream: &Upstream,
        plugins: Option<&Path>,
        shared: Option<&SharedStore>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-bench-")
            .tempdir()
            .context("cannot create a temp dir")?;
        let policies = dir.path().join("policies");
        for (relative, contents) in scenario.policy_files(upstream) {
            let path = policies.join(&relative);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            std::fs::write(&path, contents)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        for (relative, source) in scenario.policy_copies() {
            let source = match (plugins, source.file_name()) {
                (Some(dir), Some(name)) => dir.join(name),
                _ => source,
            };
            let path = policies.join(&relative);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            std::fs::copy(&source, &path).with_context(|| {
                format!(
                    "cannot copy {} (build the plugins first: ./scripts/build-plugins)",
                    source.display()
                )
            })?;
        }
        let (database, secret, postgres) = match (shared, scenario.store()) {
            (Some(shared), _) => (shared.url.clone(), shared.secret.clone(), None),
            (None, StoreKind::Sqlite) => {
                let url = format!("sqlite://{}", dir.path().join("tollgate.db").display());
                let secret = create_key(bin, scenario, &url)?;
                (url, secret, None)
            }
            (None, StoreKind::Postgres) => {
                let db = PgDatabase::create()?;
                let secret = create_key(bin, scenario, &db.url)?;
                (db.url.clone(), secret, Some(db))
            }
        };

        let stderr_path = dir.path().join("tollgate.stderr.log");
        let stderr = std::fs::File::create(&stderr_path)
            .with_context(|| format!("cannot create {}", stderr_path.display()))?;
        let origin = Instant::now();
        let mut command = Command::new(bin);
        command.arg("serve");
        if let Some(threads) = replica_threads(scenario.replicas()) {
            command.args(["--connection-threads", &threads.to_string()]);
        }
        let mut child = command
            .arg("--policies")
            .arg(&policies)
            .args(["--listen", "127.0.0.1:0", "--database", &database])
            // The usage journal (PostgreSQL scenarios) stays in the temp dir.
            .arg("--data-dir")
            .arg(dir.path())
            .env("RUST_LOG", "info")
            .env(PROVIDER_KEY_ENV, "sk-bench-provider-key")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stdout = child
            .stdout
            .take()
            .context("the gateway's stdout is not piped")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            // Keep draining stdout after the line so the gateway never blocks on the pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !sent && let Some(url) = line.strip_prefix("tollgate listening on http://") {
                    let _ = tx.send(url.trim().to_string());
                    sent = true;
                }
            }
        });
        let mut gateway = Self {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            secret,
            sampler: None,
            stderr_path,
            _dir: dir,
            _postgres: postgres,
        };
        let listening = match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => addr,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => bail!(
                "tollgate serve did not report listening within {START_TIMEOUT:?}; its log:\n{}",
                gateway.log_tail()
            ),
            // Its stdout closed first: it exited (a refused policy directory, a bad flag).
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => bail!(
                "tollgate serve exited before listening; its log:\n{}",
                gateway.log_tail()
            ),
        };
        gateway.addr = listening
            .parse()
            .with_context(|| format!("tollgate printed an unparsable address '{listening}'"))?;
        if let Some(pid) = gateway.pid() {
            gateway.sampler = Some(Sampler::start(pid, origin));
        }
        Ok(gateway)
    }

    /// The gateway's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// CPU time the gateway has used so far.
    pub fn cpu_time(&self) -> Option<Duration> {
        read_cpu_time(self.pid()?)
    }

    /// The value of the unlabelled series `name` in the gateway's `/metrics` (`None` if the
    /// page cannot be read or has no such series, e.g. an older build).
    pub fn metric(&self, name: &str) -> Option<f64> {
        use std::io::{Read, Write};
        let mut stream =
            std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .ok()?;
        let mut page = String::new();
        stream.read_to_string(&mut page).ok()?;
        let (head, body) = page.split_once("\r\n\r\n")?;
        if !head.starts_with("HTTP/1.1 200") || head.to_ascii_lowercase().contains("chunked") {
            return None;
        }
        metric_value(body, name)
    }

    /// The last lines of the gateway's stderr.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM, wait for the graceful exit (drain + usage flush), and report memory.
    pub fn stop(mut self) -> anyhow::Result<GatewayStats> {
        let mut child = self
            .child
            .take()
            .context("the gateway was already stopped")?;
        let pid = child.id();
        let peak = read_rss(pid);
        let samples = self.sampler.take().map(Sampler::finish).unwrap_or_default();
        // `unsafe_code` is forbidden, so the signal goes through kill(1).
        let signalled = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut clean_exit = false;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    clean_exit = signalled;
                    break status;
                }
                Ok(None) if Instant::now() < deadline && signalled => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    let _ = child.kill();
                    break child.wait().context("cannot reap the gateway")?;
                }
            }
        };
        let (final_rss_kb, peak_from_samples) =
            samples.last().map_or((0, 0), |s| (s.rss_kb, s.hwm_kb));
        Ok(GatewayStats {
            peak_rss_kb: peak.map_or(peak_from_samples, |(_, hwm)| hwm),
            final_rss_kb,
            samples,
            clean_exit: clean_exit && status.success(),
            exit_status: status.to_string(),
        })
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(sampler) = self.sampler.take() {
            sampler.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metric_is_read_from_its_own_unlabelled_line() {
        let page = "# HELP tollgate_budget_store_holds_total Holds.\n\
                    tollgate_budget_store_holds_total_extra 9\n\
                    tollgate_budget_store_holds_total{x=\"y\"} 8\n\
                    tollgate_budget_store_holds_total 42\n";
        assert_eq!(
            metric_value(page, "tollgate_budget_store_holds_total"),
            Some(42.0)
        );
        assert_eq!(metric_value(page, "tollgate_missing"), None);
    }

    #[test]
    fn replicas_share_the_cpus_and_a_single_gateway_takes_its_default() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(replica_threads(1), None);
        assert_eq!(replica_threads(2), Some((cpus / 2).max(1)));
        assert_eq!(replica_threads(cpus * 4), Some(1));
    }

    #[test]
    fn rss_of_this_process_is_readable() {
        let (rss, hwm) = read_rss(std::process::id()).expect("proc status");
        assert!(rss > 0 && hwm >= rss);
    }

    #[test]
    fn cpu_time_of_this_process_is_readable() {
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(read_cpu_time(std::process::id()).is_some());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn cpu_time_of_processes_by_name_sums_this_process() {
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
        let own = read_cpu_time(std::process::id()).unwrap_or_default();
        let all = processes_cpu_time(comm.trim_end());
        assert!(all.is_some_and(|t| t >= own), "{all:?} vs {own:?}");
        assert_eq!(processes_cpu_time("no-such-process-name"), None);
    }

    /// The PostgreSQL server's CPU is read wherever one runs on this machine (the bench's
    /// PostgreSQL scenarios need one at 127.0.0.1:5432).
    #[cfg(target_os = "linux")]
    #[test]
    fn postgres_cpu_time_is_read_where_postgres_runs() {
        let reachable = Command::new("psql")
            .args([PG_ADMIN, "-q", "-c", "SELECT 1"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !reachable {
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: PostgreSQL is not reachable at 127.0.0.1:5432"
            );
            return;
        }
        let cpu = postgres_cpu_time();
        assert!(cpu.is_some(), "no process named postgres found in /proc");
    }
}
