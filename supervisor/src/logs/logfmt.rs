//! A logfmt tokenizer: `key=value key2="quoted \" value" flag`.
//!
//! Hand-written because no well-kept crate parses logfmt (the format is ~40 lines of rules).
//! Invariant: it never fails on any input; `None` means "this is not logfmt", and the caller
//! keeps the line as plain text. Keys and values borrow from the line; only a quoted value
//! with an escape in it is copied.

use std::borrow::Cow;

use super::swar;

/// One `key=value` pair; a bare `key` has no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair<'a> {
    /// The key (never empty, no spaces, no `=` or `"`).
    pub key: &'a str,
    /// The value, unquoted and unescaped; None for a bare key.
    pub value: Option<Cow<'a, str>>,
}

/// Split a line into pairs, or None if it has a stray quote or `=` without a key.
pub fn tokenize(line: &str) -> Option<Vec<Pair<'_>>> {
    let mut pairs = Vec::with_capacity(8);
    let mut at = 0;
    while let Some((pair, next)) = pair_at(line, skip_space(line, at))? {
        pairs.push(pair);
        at = next;
    }
    Some(pairs)
}

/// The pair that starts at `start` (after any space) and where it ends; `Some(None)` at the
/// end of the line; `None` if the token there is not logfmt.
pub(crate) fn pair_at(line: &str, start: usize) -> Option<Option<(Pair<'_>, usize)>> {
    let bytes = line.as_bytes();
    if start >= bytes.len() {
        return Some(None);
    }
    // Keys are short: byte by byte (eight at a time only cost more, measured).
    let mut i = start;
    while i < bytes.len() {
        match CLASS[usize::from(bytes[i])] {
            PLAIN => i += 1,
            EQ | SPACE => break,
            QUOTE => return None,
            _ if space_len(line, i) > 0 => break,
            _ => i += 1,
        }
    }
    if i == start {
        return None; // `=value` without a key
    }
    let key = &line[start..i];
    if bytes.get(i) != Some(&b'=') {
        return Some(Some((Pair { key, value: None }, i)));
    }
    let (value, end) = value_at(line, i + 1)?;
    Some(Some((
        Pair {
            key,
            value: Some(value),
        },
        end,
    )))
}

/// The value that starts at `start` (just after `=`) and where it ends.
fn value_at(line: &str, start: usize) -> Option<(Cow<'_, str>, usize)> {
    let bytes = line.as_bytes();
    if bytes.get(start) == Some(&b'"') {
        let body = start + 1;
        let mut i = body;
        let mut escaped = false;
        loop {
            match *bytes.get(i)? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    i += 2;
                }
                _ => i += 1,
            }
        }
        // A quoted value must end the token.
        if i + 1 < bytes.len() && space_len(line, i + 1) == 0 {
            return None;
        }
        let raw = &line[body..i];
        let value = if escaped {
            Cow::Owned(unescape(raw))
        } else {
            Cow::Borrowed(raw)
        };
        return Some((value, i + 1));
    }
    let mut i = start;
    loop {
        i = value_plain_end(bytes, i);
        match bytes.get(i).map(|&b| CLASS[usize::from(b)]) {
            None | Some(SPACE) => break,
            Some(QUOTE) => return None,
            _ if space_len(line, i) > 0 => break,
            _ => i += 1,
        }
    }
    Some((Cow::Borrowed(&line[start..i]), i))
}

/// The first index at or after `at` whose byte is neither [`PLAIN`] nor [`EQ`] (the end of
/// an unquoted value's plain run), or `bytes.len()`. Eight bytes at a time while none of them
/// can be one (no byte at or below a space, no `"` or non-ASCII byte), then byte by byte
/// from the first eight that may.
fn value_plain_end(bytes: &[u8], mut at: usize) -> usize {
    while let Some(c) = bytes.get(at..at + 8) {
        let x = swar::load(c);
        if swar::any_below(x, 0x21) | swar::any_high(x) | swar::any_eq(x, b'"') {
            break;
        }
        at += 8;
    }
    while let Some(&b) = bytes.get(at) {
        match CLASS[usize::from(b)] {
            PLAIN | EQ => at += 1,
            _ => break,
        }
    }
    at
}

/// What a byte is to the tokenizer: most are [`PLAIN`]; [`HIGH`] (non-ASCII) bytes need a
/// look at their character.
const PLAIN: u8 = 0;
const SPACE: u8 = 1;
const EQ: u8 = 2;
const QUOTE: u8 = 3;
const HIGH: u8 = 4;
static CLASS: [u8; 256] = {
    let mut t = [PLAIN; 256];
    let mut i = 0x80;
    while i < 256 {
        t[i] = HIGH;
        i += 1;
    }
    t[b' ' as usize] = SPACE;
    t[b'\t' as usize] = SPACE;
    t[b'\n' as usize] = SPACE;
    t[0x0b] = SPACE;
    t[0x0c] = SPACE;
    t[b'\r' as usize] = SPACE;
    t[b'=' as usize] = EQ;
    t[b'"' as usize] = QUOTE;
    t
};

fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some(c) => out.push(c),
            None => {}
        }
    }
    out
}

/// The first index at or after `at` that is not whitespace.
pub(crate) fn skip_space(line: &str, mut at: usize) -> usize {
    let bytes = line.as_bytes();
    while at < bytes.len() {
        match CLASS[usize::from(bytes[at])] {
            SPACE => at += 1,
            HIGH => match space_len(line, at) {
                0 => break,
                n => at += n,
            },
            _ => break,
        }
    }
    at
}

/// The end of the whitespace-free word that starts at `at`.
pub(crate) fn word_end(line: &str, mut at: usize) -> usize {
    let bytes = line.as_bytes();
    // Eight bytes at a time while none is a space, a control or non-ASCII.
    while let Some(c) = bytes.get(at..at + 8) {
        let x = swar::load(c);
        if swar::any_below(x, 0x21) | swar::any_high(x) {
            break;
        }
        at += 8;
    }
    while at < bytes.len() {
        match CLASS[usize::from(bytes[at])] {
            SPACE => break,
            HIGH if space_len(line, at) > 0 => break,
            _ => at += 1,
        }
    }
    at
}

/// The length of the whitespace character at byte `i` (a char boundary or a continuation
/// byte), or 0. ASCII is decided by the byte; anything else by `char::is_whitespace`, as
/// before (U+00A0 and U+3000 separate tokens too).
pub(crate) fn space_len(line: &str, i: usize) -> usize {
    let b = line.as_bytes()[i];
    if b < 0x80 {
        return usize::from(CLASS[usize::from(b)] == SPACE);
    }
    if !line.is_char_boundary(i) {
        return 0;
    }
    line[i..]
        .chars()
        .next()
        .filter(|c| c.is_whitespace())
        .map_or(0, char::len_utf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p<'a>(k: &'a str, v: Option<&'a str>) -> Pair<'a> {
        Pair {
            key: k,
            value: v.map(Into::into),
        }
    }

    #[test]
    fn pairs_quotes_and_bare_keys() {
        let got =
            tokenize(r#"level=info msg="hello \"world\"" empty= dur=1.5s ok"#).expect("logfmt");
        assert_eq!(
            got,
            vec![
                p("level", Some("info")),
                p("msg", Some("hello \"world\"")),
                p("empty", Some("")),
                p("dur", Some("1.5s")),
                p("ok", None),
            ]
        );
    }

    #[test]
    fn the_eight_byte_scans_stop_where_the_byte_loops_do() {
        let slow = |b: &[u8], mut at: usize| {
            while at < b.len() && matches!(CLASS[usize::from(b[at])], PLAIN | EQ) {
                at += 1;
            }
            at
        };
        let slow_word = |b: &[u8], mut at: usize| {
            while at < b.len() && CLASS[usize::from(b[at])] != SPACE {
                at += 1;
            }
            at
        };
        for len in 0..20 {
            for stop_at in 0..len {
                for stop in [b' ', b'\t', b'=', b'"', 0xc3, 0x01, b'\\', b'\n'] {
                    let mut b = vec![b'k'; len];
                    b[stop_at] = stop;
                    for from in 0..=len {
                        if stop < 0x80 {
                            let text = std::str::from_utf8(&b).expect("ASCII");
                            assert_eq!(word_end(text, from), slow_word(&b, from), "{b:?}");
                        }
                        assert_eq!(value_plain_end(&b, from), slow(&b, from), "{b:?} {from}");
                    }
                }
            }
        }
    }

    #[test]
    fn not_logfmt() {
        assert_eq!(tokenize(r#"a="unterminated"#), None);
        assert_eq!(tokenize("=x"), None);
        assert_eq!(tokenize(r#"say "hi""#), None);
        assert_eq!(tokenize(r#"a="x"y"#), None);
    }
}
