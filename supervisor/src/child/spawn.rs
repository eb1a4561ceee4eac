//! Starting the app: its own process group, a parent-death signal, identity and environment.
//!
//! The app is started as glibc's `posix_spawn` starts a program, with `clone(CLONE_VM |
//! CLONE_VFORK)` rather than `fork` (see [`launch_app`]): the steps before the exec that
//! `posix_spawn` has no attribute for (the parent-death signal, the terminal, the identity
//! switch) run in the child as raw system calls. The program is looked up in the app's
//! `PATH` as execvp(3) does, a file without `#!` runs through `/bin/sh`, and the app starts
//! with no signal blocked and SIGPIPE at its default, as with std's `Command`.
//!
//! Invariant: [`spawn`] must be called from a thread that lives as long as tandem (the main
//! thread, which runs the lifecycle). Linux sends the parent-death signal when the *thread*
//! that started the child exits, so spawning from a short-lived blocking-pool thread would
//! kill the app a few seconds later.
#![allow(unsafe_code)]

use std::{
    collections::BTreeMap,
    ffi::{CString, OsStr, OsString},
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::PathBuf,
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

    let program = cstring(spec, spec.program.as_str())?;
    let env = child_env(spec, user.as_ref());
    let paths = candidates(
        &spec.program,
        env.get(OsStr::new("PATH")).map(OsString::as_os_str),
    )
    .map_err(|e| other(spec, e))?;
    let argv_owned = std::iter::once(Ok(program))
        .chain(spec.args.iter().map(|a| cstring(spec, a.as_str())))
        .collect::<Result<Vec<_>, _>>()?;
    let envp_owned = env
        .iter()
        .map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            cstring(spec, kv)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let cwd = match &spec.workdir {
        Some(dir) => Some(cstring(spec, dir.as_os_str().as_bytes())?),
        None => None,
    };
    // stdout and stderr: pipes tandem reads, their write ends the app's fds 1 and 2
    let pipes = match stdio {
        StdioMode::Pipe => Some((
            pipe().map_err(|e| classify(spec, e))?,
            pipe().map_err(|e| classify(spec, e))?,
        )),
        StdioMode::Inherit => None,
    };

    let foreground_tty = nix::unistd::isatty(0).unwrap_or(false)
        && nix::unistd::tcgetpgrp(std::io::stdin())
            .map(|p| p == nix::unistd::getpgrp())
            .unwrap_or(false);
    let groups: Vec<libc::gid_t> = identity
        .as_ref()
        .map(|id| id.groups.iter().map(|g| g.as_raw()).collect())
        .unwrap_or_default();
    let nul = std::ptr::null::<libc::c_char>();
    let argv: Vec<*const libc::c_char> =
        argv_owned.iter().map(|a| a.as_ptr()).chain([nul]).collect();
    // `/bin/sh PATH ARGS...`, for a file the kernel cannot execute (a script without `#!`),
    // as execvp does: slot 1 is filled in by the child with the path that failed
    let mut sh_argv: Vec<*const libc::c_char> = [SH.as_ptr(), nul]
        .into_iter()
        .chain(argv_owned.iter().skip(1).map(|a| a.as_ptr()))
        .chain([nul])
        .collect();
    let envp: Vec<*const libc::c_char> =
        envp_owned.iter().map(|e| e.as_ptr()).chain([nul]).collect();
    let path_ptrs: Vec<*const libc::c_char> = paths.iter().map(|p| p.as_ptr()).collect();
    let mut launch = Launch {
        paths: path_ptrs.as_ptr(),
        paths_len: path_ptrs.len(),
        argv: argv.as_ptr(),
        sh_argv: sh_argv.as_mut_ptr(),
        envp: envp.as_ptr(),
        cwd: cwd.as_ref().map_or(nul, |c| c.as_ptr()),
        stdout: pipes.as_ref().map_or(-1, |((_, w), _)| w.as_raw_fd()),
        stderr: pipes.as_ref().map_or(-1, |(_, (_, w))| w.as_raw_fd()),
        parent: nix::unistd::getpid().as_raw(),
        foreground_tty,
        identity: identity
            .as_ref()
            .map(|id| (id.uid.as_raw(), id.gid.as_raw())),
        groups: groups.as_ptr(),
        groups_len: groups.len(),
        err: 0,
    };
    let pid = launch_app(&mut launch).map_err(|e| classify(spec, e))?;
    // the write ends are the app's now: closed here, so the reader sees EOF when it exits
    let (stdout, stderr) = match pipes {
        Some(((out, _), (err, _))) => (Some(out), Some(err)),
        None => (None, None),
    };
    Ok(Spawned {
        pid: Pid::from_raw(pid),
        stdout,
        stderr,
    })
}

/// `/bin/sh`, for files without `#!` (see `sh_argv`).
const SH: &std::ffi::CStr = c"/bin/sh";

/// The error of a failed start, by its errno.
fn classify(spec: &AppSpec, source: io::Error) -> SpawnError {
    match source.kind() {
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
        _ => other(spec, source),
    }
}

fn other(spec: &AppSpec, source: io::Error) -> SpawnError {
    SpawnError::Other {
        program: spec.program.clone(),
        source,
    }
}

/// `s` for the child; a NUL byte in it (which no argument or variable can hold) fails.
fn cstring(spec: &AppSpec, s: impl Into<Vec<u8>>) -> Result<CString, SpawnError> {
    CString::new(s).map_err(|e| other(spec, io::Error::new(io::ErrorKind::InvalidInput, e)))
}

/// A pipe, both ends close-on-exec, the write end at fd 3 or above (so putting it at 1 or 2
/// in the child never overwrites the other one, nor is a no-op that keeps close-on-exec).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    if write.as_raw_fd() > 2 {
        return Ok((read, write));
    }
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor that nothing else owns.
    let high = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if high < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    Ok((read, unsafe { OwnedFd::from_raw_fd(high) }))
}

/// The app's environment: tandem's, without `env_remove`, with what login(1) would set for
/// `app.user` and then the configured `app.env` (which wins).
fn child_env(spec: &AppSpec, user: Option<&User>) -> BTreeMap<OsString, OsString> {
    let mut env: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    for k in &spec.env_remove {
        env.remove(OsStr::new(k));
    }
    if let Some(user) = user {
        env.insert("HOME".into(), user.dir.clone().into_os_string());
        env.insert("USER".into(), user.name.clone().into());
        env.insert("LOGNAME".into(), user.name.clone().into());
    }
    for (k, v) in &spec.env {
        env.insert(k.into(), v.into());
    }
    env
}

/// The files to try, in order, as execvp(3) does: `program` itself when it names a path,
/// else `program` in each directory of the app's `PATH` (an empty entry is the working
/// directory; no `PATH`: `/bin:/usr/bin`, glibc's default).
fn candidates(program: &str, path: Option<&OsStr>) -> io::Result<Vec<CString>> {
    if program.is_empty() {
        return Ok(Vec::new());
    }
    let invalid = |e| io::Error::new(io::ErrorKind::InvalidInput, e);
    if program.contains('/') {
        return Ok(vec![CString::new(program).map_err(invalid)?]);
    }
    let path = path.map_or(b"/bin:/usr/bin".as_slice(), OsStr::as_bytes);
    path.split(|b| *b == b':')
        .map(|dir| {
            let mut full = dir.to_vec();
            if !full.is_empty() {
                full.push(b'/');
            }
            full.extend_from_slice(program.as_bytes());
            CString::new(full).map_err(invalid)
        })
        .collect()
}

/// What the child needs, prepared by the parent: nothing in the child allocates. Every
/// pointer stays valid while the child runs, because the parent's thread waits
/// (`CLONE_VFORK`) until the child has exec'd or exited.
struct Launch {
    /// The files to try (`candidates`).
    paths: *const *const libc::c_char,
    paths_len: usize,
    /// Null-terminated.
    argv: *const *const libc::c_char,
    /// `/bin/sh`, a slot for the path, the arguments; null-terminated.
    sh_argv: *mut *const libc::c_char,
    /// Null-terminated.
    envp: *const *const libc::c_char,
    /// Null: stay in tandem's working directory.
    cwd: *const libc::c_char,
    /// The write ends for fds 1 and 2 (-1: inherit tandem's).
    stdout: libc::c_int,
    stderr: libc::c_int,
    /// tandem's pid, to notice its death between the clone and the parent-death signal.
    parent: libc::pid_t,
    foreground_tty: bool,
    /// uid and gid to switch to, and the supplementary groups.
    identity: Option<(libc::uid_t, libc::gid_t)>,
    groups: *const libc::gid_t,
    groups_len: usize,
    /// Written by the child when a step fails (an errno); 0 when it exec'd.
    err: libc::c_int,
}

/// Starts the app as glibc's posix_spawn does: `clone(CLONE_VM | CLONE_VFORK)`, the child on
/// a small stack of its own in tandem's memory until it execs. By the time the app starts
/// (and on every restart) tandem has threads and a proxy's worth of memory: `fork` would copy
/// its page tables and make every page copy-on-write, one fault per page each side writes
/// next. The steps the child takes are [`child_main`]'s. Every signal is blocked in this
/// thread while the child runs (its handlers are tandem's code, on tandem's memory).
/// The caller holds the reaper's spawn lock: a child that failed is reaped here.
fn launch_app(launch: &mut Launch) -> io::Result<libc::pid_t> {
    const STACK: usize = 64 * 1024;
    // SAFETY: a fresh anonymous mapping, unmapped below once the child no longer runs on it.
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sigset_t is plain data; sigfillset/pthread_sigmask only write the sets given.
    // clone: `child_main` gets `launch`, which outlives the child's use of it (CLONE_VFORK
    // returns only after the child's exec or exit), and the stack's top (it grows down).
    let (pid, clone_err) = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::clone(
            child_main,
            stack.cast::<u8>().add(STACK).cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (launch as *mut Launch).cast(),
        );
        let clone_err = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        libc::munmap(stack, STACK);
        (pid, clone_err)
    };
    if pid < 0 {
        return Err(clone_err);
    }
    // SAFETY: the child wrote it, if at all, before it exited.
    let err = unsafe { std::ptr::read_volatile(&launch.err) };
    if err != 0 {
        // It exited (127) before exec: reaped here, not by the reaper (the spawn lock).
        loop {
            // SAFETY: waits for our own child only.
            let r = unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            if r >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break;
            }
        }
        return Err(io::Error::from_raw_os_error(err));
    }
    Ok(pid)
}

/// The child, between the clone and the exec: raw system calls only (glibc's `setuid` and
/// friends would signal tandem's other threads, whose memory this still is), no allocation,
/// no locks, nothing that can panic. On failure it leaves the errno in `Launch::err` and
/// exits with 127.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `Launch` (see launch_app), and the parent waits.
    unsafe {
        let launch = &mut *arg.cast::<Launch>();
        let err = child_steps(launch);
        std::ptr::write_volatile(&mut launch.err, if err == 0 { libc::EINVAL } else { err });
        libc::_exit(127)
    }
}

/// See [`child_main`]. Returns only on failure, with the errno.
unsafe fn child_steps(l: &Launch) -> libc::c_int {
    let errno = || unsafe { *libc::__errno_location() };
    // Signal handlers are tandem's code: back to the default before any signal is let in.
    // SIGPIPE too (Rust ignores it in tandem; the app gets the default, as with std's
    // Command); other ignored signals stay ignored, as across fork and exec.
    for sig in 1..65 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(sig, std::ptr::null(), &mut old) != 0
            || old.sa_sigaction == libc::SIG_DFL
            || (old.sa_sigaction == libc::SIG_IGN && sig != libc::SIGPIPE)
        {
            continue;
        }
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(sig, &dfl, std::ptr::null_mut());
    }
    // Own process group: stop signals reach every worker the app forks, and a ^C on
    // tandem's terminal does not hit the app twice.
    if libc::setpgid(0, 0) != 0 {
        return errno();
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
        return errno();
    }
    // tandem died between the clone and prctl: the signal will never come.
    if libc::getppid() != l.parent {
        return libc::ESRCH;
    }
    if l.foreground_tty {
        // Hand the terminal to the app's group (as tini does), so it can read stdin
        // without being stopped by SIGTTIN. SIGTTOU is ignored for the call itself.
        let old = libc::signal(libc::SIGTTOU, libc::SIG_IGN);
        libc::tcsetpgrp(0, libc::getpid());
        libc::signal(libc::SIGTTOU, old);
    }
    if let Some((uid, gid)) = l.identity {
        if libc::syscall(libc::SYS_setgroups, l.groups_len, l.groups) != 0
            || libc::syscall(libc::SYS_setgid, libc::c_long::from(gid)) != 0
            || libc::syscall(libc::SYS_setuid, libc::c_long::from(uid)) != 0
        {
            return errno();
        }
    }
    if !l.cwd.is_null() && libc::chdir(l.cwd) != 0 {
        return errno();
    }
    for (fd, to) in [(l.stdout, 1), (l.stderr, 2)] {
        if fd >= 0 && libc::dup2(fd, to) < 0 {
            return errno();
        }
    }
    // The app starts with no signal blocked (tandem's threads block them all).
    let mut none: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut none);
    libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    // Each candidate in turn, as execvp does: a missing one is skipped, a denied one is
    // remembered, any other failure ends the search.
    let mut denied = false;
    for i in 0..l.paths_len {
        let path = *l.paths.add(i);
        libc::execve(path, l.argv, l.envp);
        match errno() {
            libc::ENOEXEC => {
                *l.sh_argv.add(1) = path;
                libc::execve(SH.as_ptr(), l.sh_argv.cast_const(), l.envp);
                return libc::ENOEXEC;
            }
            libc::EACCES => denied = true,
            libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
            e => return e,
        }
    }
    if denied {
        libc::EACCES
    } else {
        libc::ENOENT
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(v: &[CString]) -> Vec<&str> {
        v.iter().map(|c| c.to_str().expect("utf-8")).collect()
    }

    #[test]
    fn candidates_as_execvp_tries_them() {
        let path = |p: &str| candidates("app", Some(OsStr::new(p))).expect("no NUL");
        assert_eq!(strs(&path("/a:/b/")), ["/a/app", "/b//app"]);
        // an empty entry is the working directory
        assert_eq!(strs(&path(":/a")), ["app", "/a/app"]);
        assert_eq!(strs(&path("")), ["app"]);
        assert_eq!(
            strs(&candidates("app", None).expect("no NUL")),
            ["/bin/app", "/usr/bin/app"]
        );
        // a path is tried as it is, whatever PATH says
        assert_eq!(
            strs(&candidates("./app", Some(OsStr::new("/a"))).expect("no NUL")),
            ["./app"]
        );
        assert_eq!(
            strs(&candidates("/x/app", None).expect("no NUL")),
            ["/x/app"]
        );
        assert!(candidates("", None).expect("nothing to try").is_empty());
        assert!(candidates("a\0b", None).is_err());
    }

    #[test]
    fn the_environment_drops_adds_and_overrides() {
        let spec = AppSpec {
            program: "true".into(),
            args: Vec::new(),
            workdir: None,
            env: BTreeMap::from([
                ("PATH".to_string(), "/only".to_string()),
                ("NEW".to_string(), "1".to_string()),
            ]),
            env_remove: vec!["HOME".into()],
            user: None,
            group: None,
        };
        let env = child_env(&spec, None);
        assert_eq!(
            env.get(OsStr::new("PATH")).map(OsString::as_os_str),
            Some(OsStr::new("/only"))
        );
        assert_eq!(
            env.get(OsStr::new("NEW")).map(OsString::as_os_str),
            Some(OsStr::new("1"))
        );
        assert!(!env.contains_key(OsStr::new("HOME")));
    }
}
