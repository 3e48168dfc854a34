//! `mock-upstream`: run the mock provider standalone (for the benchmark or manual testing).
//!
//! Usage: `mock-upstream [--listen 127.0.0.1:0] [--latency-ms N] [--chunks N]`; prints
//! `mock-upstream listening on http://ADDR` once ready.

use std::net::SocketAddr;
use std::time::Duration;

use mock_upstream::MockConfig;

#[tokio::main]
async fn main() {
    let mut listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut config = MockConfig {
        record: false,
        ..MockConfig::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_default();
        match flag.as_str() {
            "--listen" => listen = value.parse().unwrap_or(listen),
            "--latency-ms" => config.latency = Duration::from_millis(value.parse().unwrap_or(0)),
            "--chunks" => config.stream_chunks = value.parse().unwrap_or(config.stream_chunks),
            other => {
                eprintln!("unknown flag {other}");
                std::process::exit(2);
            }
        }
    }
    match mock_upstream::start(listen, config).await {
        Ok(handle) => {
            println!("mock-upstream listening on http://{}", handle.addr);
            std::future::pending::<()>().await;
        }
        Err(e) => {
            eprintln!("mock-upstream: cannot listen on {listen}: {e}");
            std::process::exit(1);
        }
    }
}
