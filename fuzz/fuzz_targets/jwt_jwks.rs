//! JWT bearer tokens checked against a JWKS document (`auth.jwt` of a proxy listener), both
//! from the input: the JWKS goes through the same file loader a listener uses, the token
//! through the same `verify`.
//!
//! Input: the token on the first line, the JWKS document after it. Asserts: no panic on any
//! token or document; a JWKS is refused with a reason, never half-loaded; verification is
//! deterministic; a token whose header says `alg: none`, or whose signature part is empty,
//! never verifies.
#![no_main]

use std::cell::RefCell;
use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use tandem_proxy::fuzzing::verify_jwt;

thread_local! {
    /// One temp dir per fuzzing process; the JWKS file in it is rewritten per input.
    static DIR: RefCell<Option<tempfile::TempDir>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    let (token, jwks) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(token) = std::str::from_utf8(token) else {
        return;
    };
    let path = jwks_path();
    std::fs::write(&path, jwks).expect("write the JWKS file");
    let Ok(verdict) = verify_jwt(&path, token) else {
        return;
    };
    let again = verify_jwt(&path, token).expect("the same JWKS loads twice");
    assert_eq!(verdict, again, "verification is not deterministic");
    if verdict.is_ok() {
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3, "a verified token has three parts");
        assert!(!parts[2].is_empty(), "a token without a signature verified");
        assert!(
            !header_alg_is_none(parts[0]),
            "a token with alg none verified"
        );
    }
});

fn jwks_path() -> PathBuf {
    DIR.with(|d| {
        d.borrow_mut()
            .get_or_insert_with(|| tempfile::tempdir().expect("a temp dir"))
            .path()
            .join("jwks.json")
    })
}

/// Whether the base64url header names `alg: none` (any case), decoded without a base64 crate.
fn header_alg_is_none(b64: &str) -> bool {
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in b64.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => continue,
        };
        bits = (bits << 6) | u32::from(v);
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
    text.replace(' ', "").contains("\"alg\":\"none\"")
}
