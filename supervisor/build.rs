//! Keeps the `tandem` binary a position-independent executable (PIE, the toolchain's default)
//! unless `TANDEM_NO_PIE=1` asks for a position-dependent one.
//!
//! Why PIE: address-space randomisation of tandem's own image is worth more than what it
//! costs a sidecar that faces the network. The cost, measured (BENCHMARKS.md, "supervisor
//! start"): a PIE of this size carries ~31,000 relative relocations that the loader applies at
//! every start (~140 copy-on-write page faults before `main`), about 0.3 ms of `tandem -- true`
//! and ~1.5 MiB of resident memory across tandem and its guard. `TANDEM_NO_PIE=1 cargo build`
//! trades the randomisation for those (the default of Go binaries such as Nomad and Consul).
//! Static builds (`crt-static`, the container images) are static-pie by the same rule: see
//! `compose/build-images.sh`.
fn main() {
    println!("cargo:rerun-if-env-changed=TANDEM_NO_PIE");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux");
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let crt_static = features.split(',').any(|f| f == "crt-static");
    let no_pie = std::env::var("TANDEM_NO_PIE").is_ok_and(|v| v == "1");
    if linux && !crt_static && no_pie {
        println!("cargo:rustc-link-arg-bin=tandem=-no-pie");
    }
}
