//! The Prometheus text format (and OpenMetrics text, which the registry writes), read: one
//! parser for everything in tandem that reads the registry's text (`listener_stats` for the
//! status figures, `telemetry::metrics` for the OTLP bridge).
//!
//! A leaf: it imports nothing of tandem's. What a reader must know: a line it cannot parse is
//! skipped ([`parse_line`] gives `None`), never an error and never a panic, since the text may
//! come from elsewhere one day; `# EOF` ends the text ([`lines`] stops there). Label values
//! are unescaped (`\\`, `\"`, `\n`; any other `\x` is kept as written, as Prometheus does);
//! values are floats, `+Inf`, `-Inf` or `NaN`; a timestamp and an OpenMetrics exemplar
//! (`# {...} v`) may follow the value.
use std::borrow::Cow;

/// One line of the text, understood.
#[derive(Debug, Clone, PartialEq)]
pub enum Line<'a> {
    /// `# HELP name text` (the text unescaped).
    Help { name: &'a str, text: Cow<'a, str> },
    /// `# TYPE name kind` (`counter`, `gauge`, `histogram`, ...).
    Type { name: &'a str, kind: &'a str },
    /// `name{labels} value [timestamp]`.
    Sample(Sample<'a>),
    /// Any other comment (`# UNIT`, free text) or an empty line.
    Comment,
    /// `# EOF`: the end of the text.
    Eof,
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    /// The sample's name (`tandem_proxy_requests_total`, `..._bucket`).
    pub name: &'a str,
    /// Label names and values (unescaped), in the order written.
    pub labels: Vec<(&'a str, Cow<'a, str>)>,
    pub value: f64,
    /// As written (milliseconds in the Prometheus format, seconds in OpenMetrics).
    pub timestamp: Option<f64>,
}

// === impl Sample ===

impl Sample<'_> {
    /// The value of label `key`, if the sample has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_ref())
    }
}

/// The lines of `text` that parse, up to `# EOF` (excluded) or the end.
pub fn lines(text: &str) -> impl Iterator<Item = Line<'_>> {
    text.lines()
        .filter_map(parse_line)
        .take_while(|l| *l != Line::Eof)
}

/// The samples of `text`, up to `# EOF`.
pub fn samples(text: &str) -> impl Iterator<Item = Sample<'_>> {
    lines(text).filter_map(|l| match l {
        Line::Sample(s) => Some(s),
        _ => None,
    })
}

/// The samples of `text` whose name starts with `prefix`, up to `# EOF`: the other lines are
/// passed over without being parsed (a reader of one family pays for that family only).
pub fn samples_with_prefix<'a>(
    text: &'a str,
    prefix: &'a str,
) -> impl Iterator<Item = Sample<'a>> + 'a {
    text.lines()
        .take_while(|l| l.trim_end() != "# EOF")
        .filter(move |l| l.starts_with(prefix))
        .filter_map(sample)
}

/// One line; None when it does not parse.
pub fn parse_line(line: &str) -> Option<Line<'_>> {
    let line = line.trim_end();
    if line.is_empty() {
        return Some(Line::Comment);
    }
    let Some(comment) = line.strip_prefix('#') else {
        return sample(line).map(Line::Sample);
    };
    let comment = comment.trim_start();
    if comment == "EOF" {
        return Some(Line::Eof);
    }
    if let Some(rest) = comment.strip_prefix("HELP ") {
        let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
        return Some(Line::Help {
            name,
            text: unescape(text.trim_start()),
        });
    }
    if let Some(rest) = comment.strip_prefix("TYPE ") {
        let (name, kind) = rest.split_once(' ')?;
        return Some(Line::Type {
            name,
            kind: kind.trim(),
        });
    }
    Some(Line::Comment)
}

/// `name{k="v",...} value [timestamp] [# exemplar]`.
fn sample(line: &str) -> Option<Sample<'_>> {
    let end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let (name, mut rest) = line.split_at(end);
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        rest = label_set(body, &mut labels)?;
    }
    // At least one blank between the name (or labels) and the value.
    if !rest.starts_with([' ', '\t']) {
        return None;
    }
    let mut tokens = rest.split_whitespace();
    let value = number(tokens.next()?)?;
    let timestamp = match tokens.next() {
        None => None,
        // An OpenMetrics exemplar, not ours to read.
        Some(t) if t.starts_with('#') => None,
        Some(t) => {
            let ts = number(t)?;
            match tokens.next() {
                None => {}
                Some(t) if t.starts_with('#') => {}
                Some(_) => return None,
            }
            Some(ts)
        }
    };
    Some(Sample {
        name,
        labels,
        value,
        timestamp,
    })
}

/// Labels after the `{`, into `out`; what follows the `}`.
fn label_set<'a>(mut s: &'a str, out: &mut Vec<(&'a str, Cow<'a, str>)>) -> Option<&'a str> {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Some(rest);
        }
        let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
        let (key, rest) = s.split_at(end);
        if key.is_empty() {
            return None;
        }
        let rest = rest.trim_start().strip_prefix('=')?.trim_start();
        let rest = rest.strip_prefix('"')?;
        let close = closing_quote(rest)?;
        out.push((key, unescape(&rest[..close])));
        s = rest[close + 1..].trim_start();
        // A comma between labels, and one allowed before the `}`.
        if let Some(r) = s.strip_prefix(',') {
            s = r;
        } else if !s.starts_with('}') {
            return None;
        }
    }
}

/// Where the unescaped `"` closing a quoted value is.
fn closing_quote(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, b) in s.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            b'"' => return Some(i),
            _ => {}
        }
    }
    None
}

/// `\\`, `\"` and `\n` resolved; any other backslash kept as written.
fn unescape(s: &str) -> Cow<'_, str> {
    if !s.contains('\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('"') => out.push('"'),
            Some('n') => out.push('\n'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    Cow::Owned(out)
}

/// A float as the format writes it: `+Inf`, `-Inf`, `NaN` or a decimal number (not Rust's
/// other spellings, `inf` or `infinity`).
fn number(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ if s
            .bytes()
            .any(|b| b.is_ascii_alphabetic() && b != b'e' && b != b'E') =>
        {
            None
        }
        _ => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Sample<'_> {
        match parse_line(line) {
            Some(Line::Sample(s)) => s,
            other => panic!("{line:?}: {other:?}"),
        }
    }

    #[test]
    fn a_sample_with_labels_value_and_timestamp() {
        let s = one(r#"http_requests_total{method="post",code="200"} 1027 1395066363000"#);
        assert_eq!(s.name, "http_requests_total");
        assert_eq!(s.label("method"), Some("post"));
        assert_eq!(s.label("code"), Some("200"));
        assert_eq!(s.label("nope"), None);
        assert_eq!((s.value, s.timestamp), (1027.0, Some(1395066363000.0)));
        let bare = one("tandem_app_up 1");
        assert_eq!(
            (bare.name, bare.labels.len(), bare.value),
            ("tandem_app_up", 0, 1.0)
        );
        assert_eq!(bare.timestamp, None);
        assert_eq!(one("x{} 2.5e-3").value, 0.0025);
        // A trailing comma, blanks around the parts.
        let s = one(r#"x{ a = "1" , b="2", } 3"#);
        assert_eq!(
            (s.label("a"), s.label("b"), s.value),
            (Some("1"), Some("2"), 3.0)
        );
    }

    #[test]
    fn label_values_are_unescaped() {
        let s = one(r#"m{path="C:\\DIR\\FILE.TXT",q="say \"hi\"",nl="a\nb",odd="\d"} 1"#);
        assert_eq!(s.label("path"), Some(r"C:\DIR\FILE.TXT"));
        assert_eq!(s.label("q"), Some(r#"say "hi""#));
        assert_eq!(s.label("nl"), Some("a\nb"));
        // Not an escape the format knows: kept as written.
        assert_eq!(s.label("odd"), Some(r"\d"));
        // A `}`, `,` or `=` inside quotes is part of the value.
        let s = one(r#"m{a="}",b=",=",c="\\"} 1"#);
        assert_eq!(
            (s.label("a"), s.label("b"), s.label("c")),
            (Some("}"), Some(",="), Some("\\"))
        );
        // Without escapes, the value is borrowed from the line.
        assert!(matches!(
            one(r#"m{a="plain"} 1"#).labels[0].1,
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn special_values() {
        let s = one(r#"d_bucket{le="+Inf"} +Inf"#);
        assert_eq!(s.value, f64::INFINITY);
        assert_eq!(s.label("le"), Some("+Inf"));
        assert_eq!(one("g -Inf").value, f64::NEG_INFINITY);
        assert!(one("g NaN").value.is_nan());
        assert_eq!(one("g -0.5").value, -0.5);
        // Rust's other spellings are not the format's.
        assert_eq!(parse_line("g inf"), None);
        assert_eq!(parse_line("g infinity"), None);
    }

    #[test]
    fn an_exemplar_after_the_value_is_ignored() {
        let s = one(r#"d_bucket{le="0.1"} 8 # {trace_id="abc"} 0.05 1.7e9"#);
        assert_eq!((s.value, s.timestamp), (8.0, None));
        let s = one(r#"d_bucket{le="0.1"} 8 1.7e9 # {trace_id="abc"} 0.05"#);
        assert_eq!(s.timestamp, Some(1.7e9));
    }

    #[test]
    fn comments_help_type_and_eof() {
        assert_eq!(
            parse_line("# HELP tandem_up Whether the app is up.\\nReally."),
            Some(Line::Help {
                name: "tandem_up",
                text: Cow::Owned("Whether the app is up.\nReally.".into())
            })
        );
        assert_eq!(
            parse_line("# TYPE tandem_up gauge"),
            Some(Line::Type {
                name: "tandem_up",
                kind: "gauge"
            })
        );
        assert_eq!(parse_line("# UNIT d seconds"), Some(Line::Comment));
        assert_eq!(parse_line("# just words"), Some(Line::Comment));
        assert_eq!(parse_line(""), Some(Line::Comment));
        assert_eq!(parse_line("# EOF"), Some(Line::Eof));
        let text = "a 1\n# EOF\nb 2\n";
        let names: Vec<_> = samples(text).map(|s| s.name).collect();
        assert_eq!(names, ["a"]);
        let text = "# TYPE ab counter\nab_total 1\nb 2\nab_x{ 3\nab_y 4\n# EOF\nab_z 5\n";
        let names: Vec<_> = samples_with_prefix(text, "ab").map(|s| s.name).collect();
        assert_eq!(names, ["ab_total", "ab_y"]);
    }

    #[test]
    fn lines_it_cannot_parse_are_skipped() {
        let bad = [
            "no_value",
            "no_value{a=\"1\"}",
            "m{a=\"unclosed} 1",
            "m{a=unquoted} 1",
            "m{a=\"1\" b=\"2\"} 1",
            "m{=\"1\"} 1",
            "m{a=\"1\"",
            "m{a=\"1\"}1",
            "m 1 2 3",
            "m one",
            "m 1 two",
            "9lives 1",
            "{a=\"1\"} 1",
            "m{a=\"\\",
            "m{a=\"é\\",
            "# TYPE tandem_up",
            "m\u{0} 1",
        ];
        for line in bad {
            assert_eq!(parse_line(line), None, "{line:?}");
        }
        let mut text = bad.join("\n");
        text.push_str("\nok{a=\"1\"} 4\n");
        let all: Vec<_> = samples(&text).collect();
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].name, all[0].value), ("ok", 4.0));
    }

    #[test]
    fn no_panic_on_any_cut_of_a_line() {
        // Every prefix of a line with escapes and multi-byte characters: parsed or skipped.
        let line = r#"m{a="é\"\\\n",b="ü"} 1.5 1700000000 # {t="x"} 1"#;
        for (i, _) in line.char_indices() {
            let _ = parse_line(&line[..i]);
        }
        assert_eq!(one(line).label("a"), Some("é\"\\\n"));
    }
}
