//! Incoming trace context (`tandem_proxy::extract_trace_context`): W3C `traceparent` and
//! `tracestate`, B3 single and multi headers, as a client may send them.
//!
//! Input: up to 7 lines, the values of `traceparent`, `tracestate`, `b3`, `x-b3-traceid`,
//! `x-b3-spanid`, `x-b3-sampled`, `x-b3-flags` (an empty line leaves that header out; values
//! that are not valid header values are left out as hyper would refuse them). Asserts: no
//! panic; an extracted context is valid (non-zero ids) and remote; what tandem passes on to the
//! app (`inject_trace_context`) is a well-formed version-00 `traceparent` that extracts back to
//! the same ids, flags and trace state.
#![no_main]

use http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tandem_proxy::{extract_trace_context, inject_trace_context};

const NAMES: [&str; 7] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-sampled",
    "x-b3-flags",
];

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for (name, value) in NAMES.iter().zip(data.split(|&b| b == b'\n')) {
        if value.is_empty() {
            continue;
        }
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
    let Some(sc) = extract_trace_context(&headers) else {
        return;
    };
    assert!(sc.is_valid(), "an invalid context was extracted: {sc:?}");
    assert!(sc.is_remote());

    let mut out = HeaderMap::new();
    inject_trace_context(&sc, &mut out);
    let tp = out
        .get("traceparent")
        .expect("a valid context is injected")
        .to_str()
        .expect("traceparent is ASCII");
    let b = tp.as_bytes();
    assert_eq!(b.len(), 55, "traceparent {tp:?}");
    assert!(
        tp.starts_with("00-") && b[35] == b'-' && b[52] == b'-',
        "traceparent {tp:?}"
    );
    assert!(
        tp.bytes()
            .all(|c| c == b'-' || c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
        "traceparent {tp:?}"
    );
    let back = extract_trace_context(&out).expect("what tandem injects extracts again");
    assert_eq!(back.trace_id(), sc.trace_id());
    assert_eq!(back.span_id(), sc.span_id());
    assert_eq!(back.trace_flags(), sc.trace_flags());
    assert_eq!(
        back.trace_state(),
        sc.trace_state(),
        "tracestate did not survive"
    );
});
