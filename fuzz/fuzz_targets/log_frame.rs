//! The log framer (`tandem::logs::frame::Framer`): app bytes, read in arbitrary chunks, become
//! lines and parts of over-long lines.
//!
//! Input: 2 bytes choose `max_line_bytes` (4..=259), 1 byte the read size (1..=256), the rest
//! is what the app wrote. Asserts: no line or part exceeds `max_line_bytes`; the framer never
//! holds more than that; every input byte is accounted for exactly once, in order (each
//! emitted slice is the input at that position, and what follows it up to its `raw` length is
//! only the stripped `\r`/`\n`); parts of one line are numbered 0, 1, ... with `last` only on
//! the final one; and a line of valid UTF-8 read at once is cut into parts of valid UTF-8.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem::logs::frame::Framer;
use tandem::logs::record::Partial;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let max = 4 + usize::from(u16::from_le_bytes([data[0], data[1]]) % 256);
    let read = 1 + usize::from(data[2]);
    let input = &data[3..];

    let mut framer = Framer::new(max);
    let mut seen = Seen {
        input,
        max,
        pos: 0,
        next_part: 0,
        parts: Vec::new(),
    };
    for chunk in input.chunks(read) {
        framer.push(chunk, &mut |b, p, raw| seen.emitted(b, p, raw));
        assert!(
            framer.pending() <= max,
            "framer holds {} bytes",
            framer.pending()
        );
    }
    framer.finish(&mut |b, p, raw| seen.emitted(b, p, raw));
    assert_eq!(seen.pos, input.len(), "input bytes not accounted for");
    assert_eq!(framer.pending(), 0);

    // Valid UTF-8 text stays valid UTF-8 in every part, when the text arrives in one read.
    // Not checked across reads: a part boundary within 3 bytes after a read boundary can cut
    // a character (the back-off looks only at the current read), see docs/FUZZING-AND-SOAK.md.
    if std::str::from_utf8(input).is_ok() {
        let mut whole = Framer::new(max);
        let mut check = |b: &[u8], _: Option<Partial>, _: usize| {
            assert!(
                std::str::from_utf8(b).is_ok(),
                "a part of valid UTF-8 text is not valid UTF-8 (max {max})"
            );
        };
        whole.push(input, &mut check);
        whole.finish(&mut check);
    }
});

/// What the framer has emitted so far, checked against the input as it arrives.
struct Seen<'a> {
    input: &'a [u8],
    max: usize,
    pos: usize,
    next_part: u32,
    parts: Vec<(usize, usize)>,
}

impl Seen<'_> {
    fn emitted(&mut self, bytes: &[u8], partial: Option<Partial>, raw: usize) {
        let (input, max, pos) = (self.input, self.max, self.pos);
        assert!(
            bytes.len() <= max,
            "{} bytes emitted, max {max}",
            bytes.len()
        );
        assert!(
            raw >= bytes.len(),
            "raw {raw} below the {} bytes emitted",
            bytes.len()
        );
        assert!(pos + raw <= input.len(), "raw {raw} runs past the input");
        assert_eq!(
            &input[pos..pos + bytes.len()],
            bytes,
            "emitted bytes differ from the input"
        );
        let stripped = &input[pos + bytes.len()..pos + raw];
        assert!(
            matches!(stripped, b"" | b"\n" | b"\r\n" | b"\r"),
            "stripped {stripped:?}"
        );
        match partial {
            None => assert_eq!(self.next_part, 0, "a whole line while parts were pending"),
            Some(p) => {
                assert_eq!(p.index, self.next_part, "parts out of order");
                self.next_part = if p.last { 0 } else { self.next_part + 1 };
            }
        }
        self.parts.push((pos, bytes.len()));
        self.pos += raw;
    }
}
