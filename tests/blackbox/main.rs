//! Black-box tests of the built `tandem` binary: real child processes, signals and sockets.
//!
//! One test binary, one module per concern; shared helpers live in `support`.
