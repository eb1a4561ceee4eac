//! tandem's exit codes: the one number an orchestrator reads when tandem ends.
//!
//! The rule (tini's): tandem exits with the app's own code, or 128+N when signal N ended the
//! app. Only tandem's own failures use the codes below; they are documented in the README and
//! must never change meaning, because systemd units and Nomad/Compose policies key on them.

/// Bad command line or config (EX_USAGE, as linkerd2-proxy does): nothing was started.
pub const CONFIG: i32 = 64;
/// Beside the app (no command), the app failed its liveness probe and `restart.policy` is not
/// `never`: tandem cannot restart an app it does not own, so it exits for its orchestrator to
/// restart it (EX_UNAVAILABLE). In Compose's extra-service mode that moves a restarted tandem
/// into the restarted app container's new network namespace (docker/compose#6626).
pub const BESIDE_UNAVAILABLE: i32 = 69;
/// tandem itself failed (could not install signal handlers, create a pipe, ...).
pub const INTERNAL: i32 = 70;
/// The restart start limit was hit: the app kept failing, the orchestrator should take over.
pub const START_LIMIT: i32 = 75;
/// The app's command exists but could not be executed (permission denied, not an executable).
pub const CANNOT_EXECUTE: i32 = 126;
/// The app's command was not found (the shell's convention).
pub const NOT_FOUND: i32 = 127;

/// The exit code for an app that exited with `code`, or was killed by signal `signal`.
pub fn from_status(code: Option<i32>, signal: Option<i32>) -> i32 {
    match (code, signal) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => INTERNAL,
    }
}
