//! The steps of one HTTP request, each a plain operation on the values it needs (a
//! [`route::Route`] at most): host and limit checks, hygiene, shedding, the readiness hold, the
//! whole-request timeout, retries with replay and budget, the attempt to the app.

pub(crate) mod app_exits;
pub(crate) mod backoff;
pub(crate) mod body;
pub(crate) mod bound;
pub(crate) mod budget;
pub(crate) mod h1;
pub(crate) mod host;
pub(crate) mod hygiene;
pub(crate) mod limits;
pub(crate) mod ready;
pub(crate) mod replay;
pub(crate) mod retry;
pub(crate) mod route;
pub(crate) mod shed;
pub(crate) mod timeout;
pub(crate) mod upstream;
