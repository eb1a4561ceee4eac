//! The app as a child process: spawn it, reap it (and every orphan), signal and stop it.
//!
//! Plain operations only; [`crate::lifecycle`] decides when each one happens.
pub mod guard;
pub mod reap;
pub mod spawn;
pub mod stop;

pub use guard::Guard;
pub use reap::{ExitStatus, Reaper};
pub use spawn::{spawn, AppSpec, SpawnError, Spawned, StdioMode};
