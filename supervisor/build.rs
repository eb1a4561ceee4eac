//! Links the `tandem` binary as a position-dependent executable (`-no-pie`) on Linux.
//!
//! Why: a PIE of this size carries ~31,000 relative relocations that the dynamic loader applies
//! at every start, dirtying ~540 KiB of `.data.rel.ro` (140 copy-on-write page faults before
//! `main`, and the same pages again in the guard process's copy). Position-dependent, those
//! pages stay clean, shared file pages. Measured (BENCHMARKS.md): `tandem -- true` ~0.3 ms
//! faster, about 120 fewer page faults, ~1.5 MiB less resident memory (tandem + guard).
//! The cost is ASLR of the executable's own image (libraries, heap, stacks and mmaps are
//! still randomised), the default of Go binaries such as Nomad, Consul and the OpenTelemetry
//! Collector. `TANDEM_PIE=1 cargo build` keeps a PIE. Static builds (`crt-static`, the
//! container images) choose with `-C relocation-model`: see `compose/build-images.sh`.
fn main() {
    println!("cargo:rerun-if-env-changed=TANDEM_PIE");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux");
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let crt_static = features.split(',').any(|f| f == "crt-static");
    let pie = std::env::var("TANDEM_PIE").is_ok_and(|v| v == "1");
    if linux && !crt_static && !pie {
        println!("cargo:rustc-link-arg-bin=tandem=-no-pie");
    }
}
