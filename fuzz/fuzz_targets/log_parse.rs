//! The line parsers (`tandem::logs::parse::parse_into`: JSON, logfmt, the auto-detecting
//! parser, plain) and the JSON line a record becomes on the stdout/file sinks.
//!
//! Input: 1 byte chooses the format (auto, json, logfmt, plain), the rest is one line as the
//! app wrote it (made text the way the pipeline does: lossy UTF-8). Asserts: no panic; a
//! record always comes out; a line that fails to parse is kept whole as the message; `plain`
//! never changes the line; trace and span ids are 32 and 16 lowercase hex digits; the rendered
//! record is exactly one line of valid JSON with the message and fields it should have; and
//! the logfmt tokenizer's keys are never empty and never hold space, `=` or `"`.
#![no_main]

use std::sync::Arc;
use std::time::SystemTime;

use libfuzzer_sys::fuzz_target;
use tandem::logs::config::ParseFormat;
use tandem::logs::logfmt;
use tandem::logs::parse::parse_into;
use tandem::logs::record::{Level, Origin, Record, Stream};
use tandem::logs::sinks::json::JsonRenderer;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, line)) = data.split_first() else {
        return;
    };
    let format = match selector % 4 {
        0 => ParseFormat::Auto,
        1 => ParseFormat::Json,
        2 => ParseFormat::Logfmt,
        _ => ParseFormat::Plain,
    };
    let text = String::from_utf8_lossy(line).into_owned();
    let origin = Arc::new(Origin {
        service: "fuzz".into(),
        pid: Some(42),
        restart_count: 1,
        resource_json: r#"{"host.name":"h"}"#.into(),
    });
    let mut r = Record::new(
        SystemTime::UNIX_EPOCH,
        Stream::Stdout,
        Level::Info,
        text.clone(),
        origin,
    );
    let ok = parse_into(format, &mut r);
    assert_eq!(
        ok, !r.parse_error,
        "the return value and parse_error disagree"
    );
    if r.parse_error {
        assert_eq!(
            r.msg, text,
            "a line that failed to parse was not kept whole"
        );
    }
    if format == ParseFormat::Plain {
        assert_eq!(r.msg, text, "plain changed the line");
        assert!(r.fields.is_none());
    }
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    if let Some(t) = &r.trace_id {
        assert!(hex(t, 32), "trace_id {t:?}");
    }
    if let Some(s) = &r.span_id {
        assert!(hex(s, 16), "span_id {s:?}");
    }

    let mut out = Vec::new();
    JsonRenderer::default().render(&r, &mut out);
    assert_eq!(
        out.last(),
        Some(&b'\n'),
        "a rendered record ends with a newline"
    );
    assert_eq!(
        out.iter().filter(|&&b| b == b'\n').count(),
        1,
        "a rendered record is exactly one line: {}",
        String::from_utf8_lossy(&out)
    );
    let v: serde_json::Value = match serde_json::from_slice(&out) {
        Ok(v) => v,
        // Field values are copied byte for byte (numbers keep their precision), so a number
        // beyond f64 (`1e999`) is valid JSON that serde_json's `Value` refuses to hold.
        Err(e) if e.to_string().starts_with("number out of range") => return,
        Err(e) => panic!(
            "the rendered record is not JSON ({e}): {}",
            String::from_utf8_lossy(&out)
        ),
    };
    assert_eq!(
        v["msg"].as_str(),
        Some(r.msg.as_str()),
        "msg did not survive rendering"
    );
    if r.fields.is_some() {
        assert!(
            v["fields"].is_object(),
            "fields is not an object: {}",
            v["fields"]
        );
    }

    if let Some(pairs) = logfmt::tokenize(&text) {
        for p in pairs {
            assert!(!p.key.is_empty(), "an empty logfmt key");
            assert!(
                !p.key
                    .contains(|c: char| c.is_whitespace() || c == '=' || c == '"'),
                "logfmt key {:?}",
                p.key
            );
        }
    }
});
