//! Listeners and connections: binding, accepting, the per-connection stack, TCP tunnels,
//! drain. The only folder that holds a whole [`listener::Listener`].

pub(crate) mod activity;
pub(crate) mod drain;
pub(crate) mod handshake;
pub(crate) mod inbound;
pub(crate) mod listener;
pub(crate) mod metered;
pub(crate) mod rlimit;
pub(crate) mod serve;
pub(crate) mod stack;
pub(crate) mod tcp;
pub(crate) mod upgrade;
