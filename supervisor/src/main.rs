//! The `tandem` binary: parse the command line, load config, hand over to the lifecycle.
//!
//! Thin on purpose (linkerd2-proxy's habit): config is validated before anything is bound or
//! spawned, and a bad one exits 64 with a message naming file, line and key.
use std::io::IsTerminal;

use clap::Parser;
use tandem::{
    admin_client,
    cli::{ActionArgs, Cli, Command, RunArgs},
    config, exit, lifecycle, upgrade,
};
use tracing_subscriber::{fmt, EnvFilter};

fn main() {
    // A replacement guard, started by a running tandem (see child::guard): nothing else.
    if std::env::args_os().nth(1).as_deref() == Some(tandem::child::guard::EXEC_MARKER.as_ref()) {
        tandem::child::guard::run_from_stdin();
    }
    // A running tandem's pre-flight of this binary (`tandem upgrade`): the hand-over it reads.
    if std::env::args_os().nth(1).as_deref() == Some(tandem::upgrade::VERSION_MARKER.as_ref()) {
        println!("tandem-handover {}", tandem::upgrade::VERSION);
        std::process::exit(0);
    }
    // Exec'd by `tandem upgrade`: what the previous image handed over (taken out of the
    // environment before any thread exists).
    let handover = tandem::upgrade::take_from_env();
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
        Some(Command::Upgrade(args)) => upgrade_cmd(&args),
        None => run(&cli.run, handover),
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

fn run(args: &RunArgs, handover: Option<Result<upgrade::Received, upgrade::Unreadable>>) -> i32 {
    let (mut handover, _fallback) = match handover {
        None => (None, None),
        Some(Ok(r)) => (Some(r.handover), r.fallback),
        Some(Err(u)) => {
            tracing::error!(event = "upgrade_failed", error = %u.why, "cannot read what the previous image handed over; going back to it");
            let why = upgrade::fall_back_unread(u);
            tracing::error!(event = "internal_error", error = %why, "no way back to the previous image");
            return exit::INTERNAL;
        }
    };
    let checked = match handover.as_ref().filter(|h| h.failed.is_some()) {
        // The old binary taking over again: it resumes with the config it ran (the files may
        // be what the new one refused), and never falls back again.
        Some(h) => match upgrade::resumed_config(h) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(event = "internal_error", error = %e, "the old binary cannot resume after a failed upgrade");
                return exit::INTERNAL;
            }
        },
        None => match load(args, true) {
            Ok(l) => l.checked,
            Err(code) => match (handover, _fallback) {
                // The pre-flight passed, but the config changed since: the old binary goes on.
                (Some(h), Some(fallback)) => {
                    let why = upgrade::fall_back(
                        &fallback,
                        h,
                        "the new binary refused the config (see its config_error)".to_string(),
                    );
                    tracing::error!(event = "internal_error", error = %why, "no way back to the previous image");
                    return exit::INTERNAL;
                }
                _ => return code,
            },
        },
    };
    let guard = match handover.as_mut() {
        // The previous image's guard goes on protecting the app.
        Some(h) => h.guard(),
        // Forked now, while tandem has one thread: see child::guard's invariant.
        None => match tandem::child::Guard::spawn() {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::warn!(event = "guard_failed", error = %e, "cannot start the guard process; if tandem is SIGKILLed the app's children may outlive it");
                None
            }
        },
    };
    // Every thread starts with the asynchronous signals blocked; the lifecycle unblocks them
    // on this thread once its handlers are in place (see signals::block_in_this_thread).
    tandem::signals::block_in_this_thread();
    let workers = match checked.config.runtime.worker_threads {
        // Without a proxy, the runtime only carries the admin port, probes and timers: one
        // worker starts faster and is plenty (the log pipeline has its own threads).
        0 if checked.config.proxy.listeners.is_empty()
            && checked.config.outbound.is_empty()
            && checked.config.outbound_proxy.is_none() =>
        {
            1
        }
        0 => std::thread::available_parallelism().map_or(2, |n| n.get().min(4)),
        n => n,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .on_thread_start(tandem::signals::block_in_this_thread)
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
    let started_from = handover
        .as_ref()
        .map(|h| h.started_from.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(upgrade::current_exe);
    let opts = lifecycle::Options {
        guard,
        config_source,
        handover,
        started_from,
    };
    // block_on keeps the lifecycle on the main thread: see lifecycle's invariant.
    let code = runtime.block_on(lifecycle::run(checked, opts));
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

/// The generation in a `/status` body (0: never upgraded); None when it is not a status.
fn generation(body: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v.is_object()
        .then(|| v["upgrade"]["generation"].as_u64().unwrap_or(0))
}

/// `tandem upgrade`: ask, then wait for the new image to report on `/status`.
fn upgrade_cmd(args: &tandem::cli::UpgradeArgs) -> i32 {
    let fail = |why: String| {
        eprintln!("tandem upgrade: {why}");
        1
    };
    let token = match args.admin.token() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("tandem upgrade: {e}");
            return exit::CONFIG;
        }
    };
    let token = token.as_deref();
    let before = match admin_client::get_with_token(&args.admin.admin, "/status", token) {
        Ok((200, body)) => generation(&body).unwrap_or(0),
        Ok((code, body)) => return fail(format!("/status refused ({code}): {}", body.trim_end())),
        Err(e) => return fail(e.to_string()),
    };
    let mut path = "/admin/upgrade".to_string();
    if let Some(binary) = &args.binary {
        let binary = std::path::absolute(binary).unwrap_or_else(|_| binary.clone());
        let encoded = percent_encoding::utf8_percent_encode(
            &binary.to_string_lossy(),
            percent_encoding::NON_ALPHANUMERIC,
        )
        .to_string();
        path.push_str(&format!("?binary={encoded}"));
    }
    match admin_client::post(&args.admin.admin, &path, token) {
        Ok((200, _)) => {}
        Ok((code, body)) => {
            println!("{}", body.trim_end());
            let why = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_else(|| body.trim_end().to_string());
            return fail(format!("refused ({code}): {why}"));
        }
        Err(e) => return fail(e.to_string()),
    }
    // The old image hands over and execs; the admin socket is handed over too, so a
    // connection made meanwhile waits in its backlog for the new image.
    let deadline = std::time::Instant::now() + args.timeout;
    while std::time::Instant::now() < deadline {
        if let Ok((200, body)) = admin_client::get_with_token(&args.admin.admin, "/status", token) {
            if generation(&body).is_some_and(|g| g > before) {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                println!("{}", v["upgrade"]);
                if v["upgrade"]["ok"].as_bool() == Some(true) {
                    return 0;
                }
                return fail(format!(
                    "the new binary did not take over: {}",
                    v["upgrade"]["error"]
                        .as_str()
                        .unwrap_or("(no reason given)")
                ));
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    fail(format!(
        "no new image reported within {}",
        humantime::format_duration(args.timeout)
    ))
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
