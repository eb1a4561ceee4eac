//! The layered config loader (`tandem::config::load`) on arbitrary TOML text and `TANDEM_*`
//! variables.
//!
//! Input: TOML text, then optionally a NUL byte and `NAME=value` lines (the environment).
//! Asserts: no panic; a config that loads renders (`tandem check --print`) to TOML that loads
//! again to the same typed config.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use tandem::config::{load, Overrides};

fuzz_target!(|data: &[u8]| {
    let (toml_text, env_text) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let env: Vec<(String, String)> = String::from_utf8_lossy(env_text)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("tandem.toml");
    write(&path, toml_text);
    let overrides = Overrides::default();
    let Ok(loaded) = load(std::slice::from_ref(&path), env.clone(), &overrides) else {
        return;
    };
    let first = toml::Table::try_from(&loaded.checked.config).expect("a loaded config serializes");

    // The effective config, as `tandem check --print` shows it, is itself a valid config
    // file that means the same thing (secrets are redacted, so only compare when none were).
    let rendered = loaded.render();
    if rendered.contains("[REDACTED]") || rendered.contains("<redacted>") {
        return;
    }
    let again_path = dir.path().join("rendered.toml");
    write(&again_path, rendered.as_bytes());
    let again = load(std::slice::from_ref(&again_path), env, &overrides).unwrap_or_else(|e| {
        panic!("the rendered config does not load again: {e}\n--- rendered ---\n{rendered}")
    });
    let second = toml::Table::try_from(&again.checked.config).expect("a loaded config serializes");
    assert_eq!(first, second, "render changed the config:\n{rendered}");
});

fn write(path: &std::path::Path, bytes: &[u8]) {
    let mut f = std::fs::File::create(path).expect("create a temp file");
    f.write_all(bytes).expect("write a temp file");
}
