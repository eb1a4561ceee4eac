//! A logfmt tokenizer: `key=value key2="quoted \" value" flag`.
//!
//! Hand-written because no well-kept crate parses logfmt (the format is ~40 lines of rules).
//! Invariant: it never fails on any input; `None` means "this is not logfmt", and the caller
//! keeps the line as plain text.

/// One `key=value` pair; a bare `key` has no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// The key (never empty, no spaces, no `=` or `"`).
    pub key: String,
    /// The value, unquoted and unescaped; None for a bare key.
    pub value: Option<String>,
}

/// Split a line into pairs, or None if it has a stray quote or `=` without a key.
pub fn tokenize(line: &str) -> Option<Vec<Pair>> {
    let mut pairs = Vec::new();
    let mut chars = line.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            return Some(pairs);
        };
        let mut end = start;
        while let Some((i, c)) = chars.next_if(|(_, c)| !c.is_whitespace() && *c != '=') {
            if c == '"' {
                return None;
            }
            end = i + c.len_utf8();
        }
        let key = &line[start..end];
        if key.is_empty() {
            return None; // `=value` without a key
        }
        let value = if chars.next_if(|(_, c)| *c == '=').is_some() {
            Some(value(&mut chars, line)?)
        } else {
            None
        };
        pairs.push(Pair {
            key: key.to_string(),
            value,
        });
    }
}

fn value(chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>, line: &str) -> Option<String> {
    if chars.next_if(|(_, c)| *c == '"').is_some() {
        let mut out = String::new();
        loop {
            match chars.next()? {
                (_, '"') => break,
                (_, '\\') => match chars.next()?.1 {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    c => out.push(c),
                },
                (_, c) => out.push(c),
            }
        }
        // A quoted value must end the token.
        if chars.peek().is_some_and(|(_, c)| !c.is_whitespace()) {
            return None;
        }
        return Some(out);
    }
    let start = chars.peek().map_or(line.len(), |(i, _)| *i);
    let mut end = start;
    while let Some((i, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
        if c == '"' {
            return None;
        }
        end = i + c.len_utf8();
    }
    Some(line[start..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(k: &str, v: Option<&str>) -> Pair {
        Pair {
            key: k.into(),
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
    fn not_logfmt() {
        assert_eq!(tokenize(r#"a="unterminated"#), None);
        assert_eq!(tokenize("=x"), None);
        assert_eq!(tokenize(r#"say "hi""#), None);
        assert_eq!(tokenize(r#"a="x"y"#), None);
    }
}
