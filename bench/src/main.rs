//! `tollgate-bench`: run the benchmark, print the table, write the JSON report.
//!
//! Build the gateway first: `cargo build --release -p tollgate && cargo run --release -p
//! tollgate-bench -- [options]` (see bench/README.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use tollgate_bench::BenchConfig;

/// Measure what tollgate adds to a call, against the same mock provider called directly.
#[derive(Debug, Parser)]
#[command(name = "tollgate-bench", version, about)]
struct Args {
    /// Measured seconds per phase.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Unrecorded warm-up seconds before each phase (same load).
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
    /// Open-loop rate, requests per second.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Open-loop rate of the streaming scenario (default: --rate).
    #[arg(long)]
    stream_rate: Option<u32>,
    /// Closed-loop concurrency (connections, each with one request in flight).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Measured requests per phase at most.
    #[arg(long, default_value_t = 1_000_000)]
    max_requests: u64,
    /// Comma-separated scenarios (default: all): passthrough, streaming, governed,
    /// governed-postgres, governed-replicas, governed-streaming, mcp, anthropic,
    /// anthropic-stream, translated, translated-stream.
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/bench/results.json")]
    out: PathBuf,
    /// Long run: tollgate's open-loop phases last 60 s, and the first and last 10 s of latency
    /// and RSS are compared.
    #[arg(long)]
    long: bool,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout_secs: f64,
    /// The tollgate binary (default: $TOLLGATE_BIN, else next to this executable).
    #[arg(long)]
    tollgate_bin: Option<PathBuf>,
    /// An earlier tollgate build to measure in the same run, under the same loads (for example
    /// the build from before a round of optimisation): the table gets a `baseline` row and the
    /// report tollgate's throughput and CPU as multiples of it.
    #[arg(long)]
    baseline_bin: Option<PathBuf>,
    /// Comma-separated scenarios the baseline build is measured in (default: governed).
    #[arg(long, value_delimiter = ',', default_value = "governed")]
    baseline_scenarios: Vec<String>,
    /// A directory with the baseline build's plugin components, named as in `plugins/dist/`
    /// (its own tree's `plugins/dist/`), when its plugin interface differs from this tree's.
    #[arg(long)]
    baseline_plugins: Option<PathBuf>,
    /// Worker threads of the load driver.
    #[arg(long, default_value_t = 1)]
    driver_threads: usize,
    /// Worker threads of the in-process mock upstream.
    #[arg(long, default_value_t = 1)]
    mock_threads: usize,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
}

fn seconds(value: f64, flag: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(value).map_err(|e| format!("{flag} {value}: {e}"))
}

fn config(args: Args) -> Result<BenchConfig, String> {
    Ok(BenchConfig {
        duration: seconds(args.duration_secs, "--duration-secs")?,
        warmup: seconds(args.warmup_secs, "--warmup-secs")?,
        rate: args.rate,
        stream_rate: args.stream_rate,
        concurrency: args.concurrency,
        max_requests: args.max_requests,
        scenarios: args.scenarios,
        out: args.out,
        long: args.long,
        request_timeout: seconds(args.timeout_secs, "--timeout-secs")?,
        tollgate_bin: args.tollgate_bin,
        baseline_bin: args.baseline_bin,
        baseline_scenarios: args.baseline_scenarios,
        baseline_plugins: args.baseline_plugins,
        driver_threads: args.driver_threads,
        mock_threads: args.mock_threads,
        progress: !args.quiet,
        ..BenchConfig::default()
    })
}

fn main() -> ExitCode {
    let config = match config(Args::parse()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match tollgate_bench::run(&config) {
        Ok(report) => {
            print!("{}", report.render());
            println!("\nJSON report: {}", config.out.display());
            if report.all_succeeded() {
                ExitCode::SUCCESS
            } else {
                for failure in report.failures() {
                    eprintln!("failure: {failure}");
                }
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
