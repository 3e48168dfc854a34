//! The `tollgate` command line.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc: the request path allocates many small, short-lived buffers; glibc malloc took
/// 12-14% of the gateway's CPU under load. `tollgate_alloc::configure` makes it return freed
/// pages when they are freed rather than when their thread next allocates.
#[global_allocator]
static GLOBAL: tollgate_alloc::MiMalloc = tollgate_alloc::MiMalloc;

fn main() -> ExitCode {
    let purge = tollgate_alloc::configure();
    let cli = tollgate::cli::Cli::parse();
    let telemetry = tollgate::cli::init_tracing(&cli);
    tracing::debug!(?purge, "allocator purge delay");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(tollgate::cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    drop(runtime);
    // Outside the runtime: the exporter's blocking client flushes the last spans.
    telemetry.shutdown();
    code
}
