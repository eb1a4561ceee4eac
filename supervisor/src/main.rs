//! The `tandem` binary: parse the command line, load config, hand over to the lifecycle.
//!
//! Thin on purpose (linkerd2-proxy's habit): config is validated before anything is bound or
//! spawned, and a bad one exits 64 with a message naming file, line and key.
use std::io::IsTerminal;

use clap::Parser;
use tandem::{
    admin_client,
    cli::{ActionArgs, Cli, Command, RunArgs},
    config, exit, lifecycle,
};
use tracing_subscriber::{fmt, EnvFilter};

fn main() {
    // A replacement guard, started by a running tandem (see child::guard): nothing else.
    if std::env::args_os().nth(1).as_deref() == Some(tandem::child::guard::EXEC_MARKER.as_ref()) {
        tandem::child::guard::run_from_stdin();
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { exit::CONFIG } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    init_tracing();
    let code = match cli.command {
        Some(Command::Check(args)) => check(&args),
        Some(Command::Status(args)) => status(&args.admin, args.json),
        Some(Command::Health(args)) => health(&args.admin),
        Some(Command::Reload(args)) => act(&args, "reload"),
        Some(Command::Restart(args)) => act(&args, "restart"),
        None => run(&cli.run),
    };
    std::process::exit(code);
}

/// tandem's own events go to stderr: JSON lines unless stderr is a terminal (or
/// TANDEM_LOG_FORMAT says otherwise); the level filter comes from TANDEM_LOG (default info).
fn init_tracing() {
    let filter = EnvFilter::try_from_env("TANDEM_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match std::env::var("TANDEM_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init();
    } else {
        builder.compact().init();
    }
}

/// Load and check the config: the one function behind both a run and `tandem check`, so both
/// report the same errors with the same exit code (64).
fn load(args: &RunArgs, require_command: bool) -> Result<config::Loaded, i32> {
    let mut overrides = args.overrides().map_err(|e| config_error(&e))?;
    overrides.require_command = require_command;
    let loaded =
        config::load(&args.config, std::env::vars(), &overrides).map_err(|e| config_error(&e))?;
    for warning in &loaded.warnings {
        tracing::warn!(event = "config_warning", "{warning}");
    }
    Ok(loaded)
}

fn config_error(e: &config::ConfigError) -> i32 {
    tracing::error!(event = "config_error", error = %e, "the config cannot be used");
    exit::CONFIG
}

fn check(args: &RunArgs) -> i32 {
    match load(args, false) {
        Ok(loaded) => {
            print!("{}", loaded.render());
            0
        }
        Err(code) => code,
    }
}

fn run(args: &RunArgs) -> i32 {
    let loaded = match load(args, true) {
        Ok(l) => l,
        Err(code) => return code,
    };
    // Forked now, while tandem has one thread: see child::guard's invariant.
    let guard = match tandem::child::Guard::spawn() {
        Ok(g) => Some(g),
        Err(e) => {
            tracing::warn!(event = "guard_failed", error = %e, "cannot start the guard process; if tandem is SIGKILLed the app's children may outlive it");
            None
        }
    };
    let workers = match loaded.checked.config.runtime.worker_threads {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get().min(4)),
        n => n,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(event = "internal_error", error = %e, "cannot start the async runtime");
            return exit::INTERNAL;
        }
    };
    // A reload reads the same files, variables and flags again (see lifecycle::reload).
    let config_source = args
        .overrides()
        .ok()
        .map(|overrides| lifecycle::reload::ConfigSource {
            files: args.config.clone(),
            overrides,
        });
    let opts = lifecycle::Options {
        guard,
        config_source,
    };
    // block_on keeps the lifecycle on the main thread: see lifecycle's invariant.
    let code = runtime.block_on(lifecycle::run(loaded.checked, opts));
    // The lifecycle has drained, flushed and reaped everything it started; what is left are
    // idle workers. Joining them only delays the exit code (and the orchestrator's restart).
    runtime.shutdown_background();
    code
}

/// `/status` as a table (colour on a terminal without `NO_COLOR`), or as it is with `--json`.
/// A body that is not JSON (a 401 without the token) is printed as it is: the exit code stays
/// 0 for any answer, as before the table.
fn status(args: &ActionArgs, json: bool) -> i32 {
    let token = match args.token() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("tandem status: {e}");
            return exit::CONFIG;
        }
    };
    match admin_client::get_with_token(&args.admin, "/status", token.as_deref()) {
        Ok((code, body)) if code != 200 => {
            eprintln!("tandem status: refused ({code}): {}", body.trim_end());
            1
        }
        Ok((_, body)) => {
            match serde_json::from_str::<serde_json::Value>(&body) {
                Ok(v) if !json && v.is_object() => {
                    let colour = std::io::stdout().is_terminal()
                        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
                    print!("{}", tandem::status_table::render(&v, colour));
                }
                _ => println!("{}", body.trim_end()),
            }
            0
        }
        Err(e) => {
            eprintln!("tandem status: {e}");
            1
        }
    }
}

fn health(admin: &str) -> i32 {
    match admin_client::get(admin, "/readyz") {
        Ok((200, _)) => 0,
        Ok((code, body)) => {
            eprintln!("tandem health: {code} {}", body.trim_end());
            1
        }
        Err(e) => {
            eprintln!("tandem health: {e}");
            1
        }
    }
}

/// `tandem reload` and `tandem restart`: ask the running tandem (`POST /admin/<action>`);
/// print its result (JSON); exit 1 when it was refused (the error on stderr too).
fn act(args: &ActionArgs, action: &str) -> i32 {
    let token = match args.token() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("tandem {action}: {e}");
            return exit::CONFIG;
        }
    };
    match admin_client::post(&args.admin, &format!("/admin/{action}"), token.as_deref()) {
        Ok((code, body)) => {
            println!("{}", body.trim_end());
            if code == 200 {
                return 0;
            }
            let why = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_else(|| body.trim_end().to_string());
            eprintln!("tandem {action}: refused ({code}): {why}");
            1
        }
        Err(e) => {
            eprintln!("tandem {action}: {e}");
            1
        }
    }
}
