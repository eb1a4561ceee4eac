//! Starting the app: its own process group, a parent-death signal, identity and environment.
//!
//! Invariant: [`spawn`] must be called from a thread that lives as long as tandem (the main
//! thread, which runs the lifecycle). Linux sends the parent-death signal when the *thread*
//! that forked exits, so spawning from a short-lived blocking-pool thread would kill the app
//! a few seconds later.
#![allow(unsafe_code)]

use std::{
    collections::BTreeMap,
    ffi::CString,
    io,
    os::{fd::OwnedFd, unix::process::CommandExt},
    path::PathBuf,
    process::{Command, Stdio},
};

use nix::unistd::{Gid, Group, Pid, Uid, User};
use thiserror::Error;

/// Everything needed to start the app once; built from config by the lifecycle.
#[derive(Debug, Clone)]
pub struct AppSpec {
    pub program: String,
    pub args: Vec<String>,
    pub workdir: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
    /// Variables of tandem's own environment the app must not inherit (sd_notify's: the
    /// socket is tandem's to speak on).
    pub env_remove: Vec<String>,
    pub user: Option<String>,
    pub group: Option<String>,
}

/// Where the app's stdout and stderr go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdioMode {
    /// The app writes to tandem's own stdout/stderr.
    Inherit,
    /// Pipes that tandem reads (the log pipeline).
    Pipe,
}

/// A started app.
#[derive(Debug)]
pub struct Spawned {
    /// The app's pid, which is also its process group id.
    pub pid: Pid,
    /// Read end of the app's stdout, in [`StdioMode::Pipe`].
    pub stdout: Option<OwnedFd>,
    /// Read end of the app's stderr, in [`StdioMode::Pipe`].
    pub stderr: Option<OwnedFd>,
}

/// Why the app could not be started.
#[derive(Debug, Error)]
pub enum SpawnError {
    #[error("command not found: {0}")]
    NotFound(String),
    #[error("cannot execute {program}: {source}")]
    CannotExecute { program: String, source: io::Error },
    #[error("working directory {0}: does not exist or is not a directory")]
    Workdir(PathBuf),
    #[error("app.user {0:?}: no such user")]
    NoUser(String),
    #[error("app.group {0:?}: no such group")]
    NoGroup(String),
    #[error("app.user: running the app as another user needs root (tandem runs as uid {0})")]
    NotRoot(u32),
    /// Out of fds, processes or memory (EMFILE, ENFILE, EAGAIN, ENOMEM): the next try may
    /// succeed, so it is a failed start for the restart policy, not tandem's failure.
    #[error("cannot start {program} now: {source}")]
    Resources { program: String, source: io::Error },
    #[error("cannot start {program}: {source}")]
    Other { program: String, source: io::Error },
}

impl SpawnError {
    /// tandem's exit code for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            SpawnError::NotFound(_) => crate::exit::NOT_FOUND,
            SpawnError::CannotExecute { .. } => crate::exit::CANNOT_EXECUTE,
            SpawnError::Workdir(_)
            | SpawnError::NoUser(_)
            | SpawnError::NoGroup(_)
            | SpawnError::NotRoot(_) => crate::exit::CONFIG,
            SpawnError::Resources { .. } | SpawnError::Other { .. } => crate::exit::INTERNAL,
        }
    }

    /// Whether trying again later may succeed (a failed start, retried by the restart
    /// policy); every other spawn error is one the next try would meet again.
    pub fn is_transient(&self) -> bool {
        matches!(self, SpawnError::Resources { .. })
    }
}

/// Identity the child switches to before exec.
struct Identity {
    uid: Uid,
    gid: Gid,
    groups: Vec<Gid>,
}

/// Start the app. See the module invariant about the calling thread.
pub fn spawn(spec: &AppSpec, stdio: StdioMode) -> Result<Spawned, SpawnError> {
    if let Some(dir) = &spec.workdir {
        if !dir.is_dir() {
            return Err(SpawnError::Workdir(dir.clone()));
        }
    }
    let (identity, user) = resolve_identity(spec)?;

    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args);
    if let Some(dir) = &spec.workdir {
        cmd.current_dir(dir);
    }
    if let Some(user) = &user {
        // What login(1) would set; explicit app.env entries below still win.
        cmd.env("HOME", &user.dir)
            .env("USER", &user.name)
            .env("LOGNAME", &user.name);
    }
    for k in &spec.env_remove {
        cmd.env_remove(k);
    }
    cmd.envs(&spec.env);
    cmd.stdin(Stdio::inherit());
    let out = || {
        if stdio == StdioMode::Pipe {
            Stdio::piped()
        } else {
            Stdio::inherit()
        }
    };
    cmd.stdout(out()).stderr(out());

    let parent = nix::unistd::getpid().as_raw();
    let foreground_tty = nix::unistd::isatty(0).unwrap_or(false)
        && nix::unistd::tcgetpgrp(std::io::stdin())
            .map(|p| p == nix::unistd::getpgrp())
            .unwrap_or(false);

    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed. It calls raw libc syscalls only, allocates nothing (`identity.groups`
    // was built before the fork) and touches no locks.
    unsafe {
        cmd.pre_exec(move || {
            // Own process group: stop signals reach every worker the app forks, and a ^C on
            // tandem's terminal does not hit the app twice.
            if libc::setpgid(0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // No orphans if tandem is SIGKILLed (the guard process takes care of the group).
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // tandem died between fork and prctl: the signal will never come.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            if foreground_tty {
                // Hand the terminal to the app's group (as tini does), so it can read stdin
                // without being stopped by SIGTTIN. SIGTTOU is ignored for the call itself.
                let old = libc::signal(libc::SIGTTOU, libc::SIG_IGN);
                libc::tcsetpgrp(0, libc::getpid());
                libc::signal(libc::SIGTTOU, old);
            }
            if let Some(id) = &identity {
                if libc::setgroups(id.groups.len(), id.groups.as_ptr().cast()) != 0
                    || libc::setgid(id.gid.as_raw()) != 0
                    || libc::setuid(id.uid.as_raw()) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }

    let mut child = cmd.spawn().map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => SpawnError::NotFound(spec.program.clone()),
        io::ErrorKind::PermissionDenied => SpawnError::CannotExecute {
            program: spec.program.clone(),
            source,
        },
        _ if source.raw_os_error() == Some(libc::ENOEXEC) => SpawnError::CannotExecute {
            program: spec.program.clone(),
            source,
        },
        _ if matches!(
            source.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::EAGAIN | libc::ENOMEM)
        ) =>
        {
            SpawnError::Resources {
                program: spec.program.clone(),
                source,
            }
        }
        _ => SpawnError::Other {
            program: spec.program.clone(),
            source,
        },
    })?;
    let pid = Pid::from_raw(child.id() as i32);
    // The `Child` is dropped without waiting: the reaper owns all waits.
    Ok(Spawned {
        pid,
        stdout: child.stdout.take().map(OwnedFd::from),
        stderr: child.stderr.take().map(OwnedFd::from),
    })
}

fn resolve_identity(spec: &AppSpec) -> Result<(Option<Identity>, Option<User>), SpawnError> {
    if spec.user.is_none() && spec.group.is_none() {
        return Ok((None, None));
    }
    let user = match &spec.user {
        Some(name) => {
            let found = match name.parse::<u32>() {
                Ok(uid) => User::from_uid(Uid::from_raw(uid)),
                Err(_) => User::from_name(name),
            };
            Some(
                found
                    .ok()
                    .flatten()
                    .ok_or_else(|| SpawnError::NoUser(name.clone()))?,
            )
        }
        None => None,
    };
    let gid = match &spec.group {
        Some(name) => {
            let found = match name.parse::<u32>() {
                Ok(gid) => Group::from_gid(Gid::from_raw(gid)),
                Err(_) => Group::from_name(name),
            };
            found
                .ok()
                .flatten()
                .ok_or_else(|| SpawnError::NoGroup(name.clone()))?
                .gid
        }
        None => user.as_ref().map_or_else(nix::unistd::getgid, |u| u.gid),
    };
    let uid = user.as_ref().map_or_else(nix::unistd::getuid, |u| u.uid);
    let me = nix::unistd::geteuid();
    if !me.is_root() {
        if uid == me && gid == nix::unistd::getegid() {
            return Ok((None, user));
        }
        return Err(SpawnError::NotRoot(me.as_raw()));
    }
    let groups = match &user {
        Some(u) => CString::new(u.name.as_str())
            .ok()
            .and_then(|n| nix::unistd::getgrouplist(&n, gid).ok())
            .unwrap_or_else(|| vec![gid]),
        None => vec![gid],
    };
    Ok((Some(Identity { uid, gid, groups }), user))
}
