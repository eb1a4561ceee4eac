//! The inbound proxy on its own, without the supervisor: for benchmarks and manual checks.
//!
//! Run with: `cargo run --release -p tandem-proxy --example standalone -- 8080=127.0.0.1:3000`
//! (any number of `[PROTOCOL:]LISTEN=UPSTREAM` specs; `--access-log` prints one line per
//! request to stderr; `--metrics` prints the Prometheus text at exit). The app counts as ready
//! at once. Ctrl-C or SIGTERM drains and prints the drain report.
//!
//! Invariant: this binary only wires the library's public API, exactly as the supervisor does.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use prometheus_client::registry::Registry;
use tandem_proxy::{parse_listener_spec, serve, CancellationToken, Hooks, Inbound};
use tokio::signal::unix::{signal, SignalKind};

#[tokio::main]
async fn main() -> ExitCode {
    let mut specs = Vec::new();
    let mut access_log = false;
    let mut metrics = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--access-log" => access_log = true,
            "--metrics" => metrics = true,
            spec => match parse_listener_spec(spec) {
                Ok(cfg) => specs.push(cfg),
                Err(e) => {
                    eprintln!("standalone: {e}");
                    return ExitCode::from(64);
                }
            },
        }
    }
    if specs.is_empty() {
        eprintln!("usage: standalone [--access-log] [--metrics] [PROTOCOL:]LISTEN=UPSTREAM...");
        return ExitCode::from(64);
    }
    let bound = match Inbound::bind(&specs).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("standalone: {e}");
            return ExitCode::from(1);
        }
    };
    for (name, addr) in bound.local_addrs() {
        eprintln!("standalone: listener {name} on {addr}");
    }
    let mut registry = Registry::default();
    let mut hooks = Hooks::new().with_metrics(&mut registry);
    if access_log {
        hooks = hooks.with_access_log(|r| eprintln!("{r:?}"));
    }
    let (_ready_tx, ready_rx) = tokio::sync::watch::channel(true);
    let serving = serve(bound, ready_rx, CancellationToken::new(), hooks);

    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("standalone: cannot install signal handlers");
        return ExitCode::from(1);
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let report = serving.drain().await;
    eprintln!("standalone: {report:?}");
    if metrics {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_ok() {
            print!("{out}");
        }
    }
    ExitCode::SUCCESS
}
