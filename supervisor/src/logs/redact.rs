//! Redaction of secrets in log records, before any sink sees them: bearer tokens, JWTs,
//! AWS-style access keys and secrets, `password=`-like pairs, plus the operator's own patterns.
//!
//! Invariant: it runs in the processor, on every record a source yields (message and fields),
//! so no sink (stdout, file, OTLP, one added later) can receive the unredacted text. Patterns
//! never match a `"` or `\`, so redacting inside the fields' JSON text keeps it valid JSON.
//! One `RegexSet` pass decides whether a record needs any rewriting; most do not.
//! A secret split across two `partial` records of an over-long line may escape a pattern.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use regex::{Regex, RegexSet};
use serde::{Deserialize, Serialize};

use super::config::LogsConfigError;
use super::record::{Fields, Record};

/// `[logs.redact]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedactConfig {
    /// Apply the built-in patterns (bearer tokens, JWTs, AWS keys, password pairs).
    pub defaults: bool,
    /// Extra regular expressions; each whole match becomes `[REDACTED]`.
    pub patterns: Vec<String>,
}

impl Default for RedactConfig {
    fn default() -> Self {
        Self {
            defaults: true,
            patterns: Vec::new(),
        }
    }
}

/// The built-in patterns and their replacements (`$1`, `$2`: the kept prefix).
const DEFAULTS: &[(&str, &str)] = &[
    // Authorization: Bearer <token> (RFC 6750 token68 characters).
    (r"(?i)\b(bearer\s+)[A-Za-z0-9\-._~+/]+=*", "${1}[REDACTED]"),
    // A JWT anywhere: three base64url parts, the first two JSON objects ("eyJ").
    (
        r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",
        "[REDACTED_JWT]",
    ),
    // AWS access key ids (long-term AKIA, temporary ASIA).
    (r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", "[REDACTED_AWS_KEY]"),
    // AWS secret access keys written as a pair.
    (
        r#"(?i)(aws_?secret_?access_?key["']?\s*[=:]\s*["']?)[A-Za-z0-9/+=]{40}"#,
        "${1}[REDACTED]",
    ),
    // password=..., "passwd": "...", secret: ..., api_key=..., token=...
    (
        r#"(?i)\b((?:password|passwd|pwd|secret|api_?key|access_?token|token)["']?\s*[=:]\s*["']?)[^\s"'\\&,;}]+"#,
        "${1}[REDACTED]",
    ),
];

/// Lowercase words one of which every built-in pattern needs (ASCII case-insensitively):
/// keep in step with [`DEFAULTS`].
const DEFAULT_NEEDLES: &[&str] = &[
    "bearer", "eyj", "akia", "asia", "aws", "passw", "pwd", "secret", "api", "token",
];

/// Whether a built-in pattern could match `text`, without compiling them: for text redacted
/// once (tandem's own events), not per record. Exact for ASCII text (where Unicode case
/// folding and `\b` add nothing); any other text answers yes.
pub fn built_in_may_match(text: &str) -> bool {
    if !text.is_ascii() {
        return true;
    }
    let lower = text.to_ascii_lowercase();
    DEFAULT_NEEDLES.iter().any(|n| lower.contains(n))
}

/// The patterns of one pipeline. The built-in patterns are compiled once per process, on the
/// first record that needs them: compiling them is most of the start-up work of an app that
/// writes nothing (`tandem -- true`), and costs a few milliseconds on the first record
/// instead. (That delay must not reorder records across restarts: the lifecycle waits for a
/// run's readers to deliver before it starts the next run.) An operator's own patterns are
/// compiled by [`Redactor::new`], so a bad one fails the config check.
/// Whether `text` may hold a match of a built-in pattern: it has the start of one of their
/// words (`akia`, `asia`, `aws`, `apik`ey, `api_`key, `bear`er, `eyj`, `pass`word, `pwd`,
/// `secr`et, `toke`n) in any ASCII case. The `RegexSet`'s own prefilter is looser (`api` of
/// `/api/v1/...` sends most request lines to the full automaton) and slower (its
/// case-insensitive literals are past its SIMD searcher's limit). This looks up the pair of
/// bytes at every even offset in a table of the words' first and second letter pairs (a word
/// at an odd offset has its second pair at an even one), and compares four bytes only there.
fn built_in_gate(text: &str) -> bool {
    let b = text.as_bytes();
    // Pairs at even offsets, without a bounds check per pair; the words are looked at only
    // where the table says a pair of one of them is there.
    b.chunks_exact(2).enumerate().any(|(k, pair)| {
        let pair = usize::from(pair[0]) << 8 | usize::from(pair[1]);
        GATE_PAIRS[pair >> 6] >> (pair & 63) & 1 != 0 && {
            let i = 2 * k;
            gate_word_at(b, i) || (i > 0 && gate_word_at(b, i - 1))
        }
    })
}

/// Whether one of the gate's words starts at `b[i]`.
fn gate_word_at(b: &[u8], i: usize) -> bool {
    const fn word(w: &[u8]) -> u32 {
        let mut x = 0u32;
        let mut i = w.len();
        while i > 0 {
            i -= 1;
            x = (x << 8) | w[i] as u32;
        }
        x
    }
    const THREE: u32 = 0x00ff_ffff;
    let at = |k: usize| b.get(i + k).copied().unwrap_or(0);
    // Lower-case letters (a non-letter never becomes one; `_` becomes 0x7f; a missing byte
    // becomes a space).
    let x = u32::from_le_bytes([at(0), at(1), at(2), at(3)]) | 0x2020_2020;
    x == word(b"akia")
        || x == word(b"asia")
        || x == word(b"apik")
        || x == word(b"api\x7f")
        || x & THREE == word(b"aws")
        || x == word(b"bear")
        || x & THREE == word(b"eyj")
        || x == word(b"pass")
        || x & THREE == word(b"pwd")
        || x == word(b"secr")
        || x == word(b"toke")
}

/// A bit per pair of bytes: set for the first and for the second two letters of a gate word,
/// in every case.
static GATE_PAIRS: [u64; 1024] = {
    let pairs: [&[u8; 2]; 20] = [
        b"ak", b"ki", b"as", b"si", b"ap", b"pi", b"aw", b"ws", b"be", b"ea", b"ey", b"yj", b"pa",
        b"as", b"pw", b"wd", b"se", b"ec", b"to", b"ok",
    ];
    let mut t = [0u64; 1024];
    let mut w = 0;
    while w < pairs.len() {
        let mut case = 0;
        while case < 4 {
            let a = pairs[w][0] & !(if case & 1 != 0 { 0x20 } else { 0 });
            let b = pairs[w][1] & !(if case & 2 != 0 { 0x20 } else { 0 });
            let pair = (a as usize) << 8 | b as usize;
            t[pair >> 6] |= 1 << (pair & 63);
            case += 1;
        }
        w += 1;
    }
    t
};

#[derive(Debug, Clone)]
pub struct Redactor {
    rules: Rules,
}

#[derive(Debug, Clone)]
enum Rules {
    None,
    BuiltIn,
    Compiled(Arc<Compiled>),
}

#[derive(Debug)]
struct Compiled {
    any: RegexSet,
    rules: Vec<(Regex, &'static str)>,
}

// === impl Compiled ===

impl Compiled {
    fn new(defaults: bool, patterns: &[String]) -> Result<Self, LogsConfigError> {
        let mut rules = Vec::new();
        if defaults {
            for (p, with) in DEFAULTS {
                rules.push((Regex::new(p).expect("the built-in patterns compile"), *with));
            }
        }
        for (i, p) in patterns.iter().enumerate() {
            let re = Regex::new(p).map_err(|e| {
                LogsConfigError::new(format!("logs.redact.patterns[{i}]"), format!("{p:?}: {e}"))
            })?;
            rules.push((re, "[REDACTED]"));
        }
        let any = RegexSet::new(rules.iter().map(|(r, _)| r.as_str()))
            .map_err(|e| LogsConfigError::new("logs.redact.patterns", e.to_string()))?;
        Ok(Self { any, rules })
    }

    /// The built-in patterns, compiled once per process on first use.
    fn built_in() -> &'static Compiled {
        static BUILT_IN: OnceLock<Compiled> = OnceLock::new();
        BUILT_IN.get_or_init(|| Compiled::new(true, &[]).expect("the built-in patterns compile"))
    }
}

// === impl Redactor ===

impl Redactor {
    /// Compiles the operator's patterns; an error names the pattern.
    pub fn new(cfg: &RedactConfig) -> Result<Self, LogsConfigError> {
        let rules = match (cfg.defaults, cfg.patterns.is_empty()) {
            (false, true) => Rules::None,
            (true, true) => Rules::BuiltIn,
            (defaults, false) => Rules::Compiled(Arc::new(Compiled::new(defaults, &cfg.patterns)?)),
        };
        Ok(Self { rules })
    }

    fn compiled(&self) -> Option<&Compiled> {
        match &self.rules {
            Rules::None => None,
            Rules::BuiltIn => Some(Compiled::built_in()),
            Rules::Compiled(c) => Some(c),
        }
    }

    /// `text` with every secret replaced; borrowed when nothing matched.
    pub fn text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        // The built-in patterns alone: a text without any of their words cannot match.
        if matches!(self.rules, Rules::BuiltIn) && !built_in_gate(text) {
            return Cow::Borrowed(text);
        }
        let Some(c) = self.compiled() else {
            return Cow::Borrowed(text);
        };
        if c.rules.is_empty() || !c.any.is_match(text) {
            return Cow::Borrowed(text);
        }
        let mut out = Cow::Borrowed(text);
        for (re, with) in &c.rules {
            if let Cow::Owned(s) = re.replace_all(&out, *with) {
                out = Cow::Owned(s);
            }
        }
        out
    }

    /// Redacts a record's message and fields in place.
    pub fn record(&self, r: &mut Record) {
        if let Cow::Owned(s) = self.text(&r.msg) {
            r.msg = s;
        }
        let fields = r
            .fields
            .as_ref()
            .and_then(|f| match self.text(f.as_json()) {
                Cow::Owned(s) => Some(s),
                Cow::Borrowed(_) => None,
            });
        if let Some(json) = fields {
            r.fields = Some(Fields::from_json_object(json));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r() -> Redactor {
        Redactor::new(&RedactConfig::default()).expect("defaults compile")
    }

    #[test]
    fn the_gate_lets_through_everything_the_built_in_patterns_match() {
        // Random texts built from pieces of the patterns' words, in mixed case, at every
        // offset: whatever a pattern matches, the gate must not have skipped.
        let pieces = [
            "Bearer ",
            "bearer\t",
            "eyJ",
            "eyJhbGciOi.",
            "eyJzdWIi.",
            "AKIA",
            "ASIA",
            "0123456789ABCDEF",
            "aws_secret_access_key=",
            "AWSSecretAccessKey: ",
            "password=",
            "PASSWD:",
            "pwd=",
            "Secret: ",
            "api_key=",
            "ApiKey=",
            "access_token=",
            "TOKEN:",
            "x",
            " ",
            "_",
            "\"",
            "=",
            "/api/v1/",
            "abc",
        ];
        let all = Compiled::built_in();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut matched = 0;
        for _ in 0..20_000 {
            let mut text = String::new();
            for _ in 0..(x % 7 + 1) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                text.push_str(pieces[(x % pieces.len() as u64) as usize]);
            }
            if all.any.is_match(&text) {
                matched += 1;
                assert!(built_in_gate(&text), "{text:?}");
            }
        }
        assert!(matched > 1_000, "only {matched} texts matched a pattern");
    }

    #[test]
    fn each_default_pattern() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl";
        for (line, secret, kept) in [
            (
                "GET / Authorization: Bearer abc.DEF-123_x~",
                "abc.DEF-123_x~",
                "Bearer [REDACTED]",
            ),
            (&format!("token {jwt} seen") as &str, jwt, "[REDACTED_JWT]"),
            (
                "key AKIAIOSFODNN7EXAMPLE used",
                "AKIAIOSFODNN7EXAMPLE",
                "[REDACTED_AWS_KEY]",
            ),
            (
                "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                "wJalrXUtnFEMI",
                "aws_secret_access_key=[REDACTED]",
            ),
            (
                "login user=bob password=hunter2 ok",
                "hunter2",
                "password=[REDACTED]",
            ),
            (
                r#"{"passwd": "s3cr3t", "n": 1}"#,
                "s3cr3t",
                r#""passwd": "[REDACTED]""#,
            ),
            ("GET /x?API_KEY=abc123 200", "abc123", "API_KEY=[REDACTED]"),
            ("Access_Token: t0k3n", "t0k3n", "Access_Token: [REDACTED]"),
        ] {
            assert!(built_in_may_match(line), "{line}");
            let out = r().text(line).into_owned();
            assert!(!out.contains(secret), "{line} -> {out}");
            assert!(out.contains(kept), "{line} -> {out}");
        }
        assert!(matches!(r().text("nothing secret here"), Cow::Borrowed(_)));
        // No word of the gate: not even looked at by the patterns.
        assert!(!built_in_gate("GET /api/v1/items/123 status=200"));
        for hit in [
            "x-API_KEY",
            "BeArEr",
            "EYJ",
            "aws",
            "PwD",
            "tokens",
            "xaws",
            "x_eyj",
            "yAKIA",
        ] {
            assert!(built_in_gate(hit), "{hit}");
        }
        for miss in ["", "ey", "api-key", "pw", "/api/v1"] {
            assert!(!built_in_gate(miss), "{miss}");
        }
        assert!(matches!(
            r().text("GET /api/v1/items/123 status=200"),
            Cow::Borrowed(_)
        ));
        assert!(!built_in_may_match("sleep 60 --port 8080"));
        assert!(built_in_may_match("--Api-Key=x") && built_in_may_match("naïve"));
    }

    #[test]
    fn json_fields_stay_json_and_custom_patterns_apply() {
        let red = Redactor::new(&RedactConfig {
            defaults: true,
            patterns: vec![r"card=\d{12,19}".into()],
        })
        .expect("compile");
        let json = r#"{"password":"p\"w","auth":"Bearer xyz","card":"card=4111111111111111"}"#;
        let out = red.text(json).into_owned();
        let v: serde_json::Value = serde_json::from_str(&out).expect("still JSON");
        assert_eq!(v["auth"], "Bearer [REDACTED]");
        assert_eq!(v["card"], "[REDACTED]");
        assert!(!out.contains("4111"));
        assert!(Redactor::new(&RedactConfig {
            defaults: false,
            patterns: vec!["(".into()],
        })
        .expect_err("bad regex")
        .key
        .contains("patterns[0]"));
    }
}
