//! The `tandem` binary: parse the command line, load config, hand over to the lifecycle.
fn main() {}
