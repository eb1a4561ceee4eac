//! Framing: a byte stream becomes lines; a line longer than `max_line_bytes` becomes parts.
//!
//! Invariant: the framer never holds more than `max_line_bytes` (the carry of an unfinished
//! line); whole lines inside a read are handed out as slices of that read, without copying. A part
//! is never cut inside a UTF-8 sequence when a boundary lies within the last 3 bytes, so a long
//! line of valid text stays valid text in every part.

use memchr::memchr_iter;

use super::record::Partial;

/// Splits bytes into lines (without the `\n`, and without a `\r` before it).
#[derive(Debug)]
pub struct Framer {
    carry: Vec<u8>,
    max: usize,
    /// Index of the next part of the current line (0 while the line has not been split).
    part: u32,
}

// === impl Framer ===

impl Framer {
    /// A framer that splits lines longer than `max_line_bytes` (at least 4).
    pub fn new(max_line_bytes: usize) -> Self {
        Self {
            carry: Vec::new(),
            max: max_line_bytes.max(4),
            part: 0,
        }
    }

    /// The unfinished line, taken out (its bytes, and the index of its next part when it was
    /// already split): for a new image of tandem to go on reading the same pipe.
    pub fn take_unfinished(&mut self) -> (Vec<u8>, u32) {
        (
            std::mem::take(&mut self.carry),
            std::mem::replace(&mut self.part, 0),
        )
    }

    /// Go on with an unfinished line a previous reader of the same stream held
    /// ([`Framer::take_unfinished`]).
    pub fn resume(&mut self, carry: Vec<u8>, part: u32) {
        self.carry = carry;
        self.part = part;
    }

    /// Bytes of an unfinished line held back until its newline (or EOF) arrives.
    pub fn pending(&self) -> usize {
        self.carry.len()
    }

    /// Feed one read; `emit` receives each complete line or part, in order, with the number of
    /// input bytes it covers (newline and `\r` included).
    pub fn push(&mut self, data: &[u8], emit: &mut impl FnMut(&[u8], Option<Partial>, usize)) {
        let mut start = 0;
        for nl in memchr_iter(b'\n', data) {
            self.line(&data[start..nl], true, emit);
            start = nl + 1;
        }
        self.unfinished(&data[start..], emit);
    }

    /// End of stream: deliver the last line even though it has no newline.
    pub fn finish(&mut self, emit: &mut impl FnMut(&[u8], Option<Partial>, usize)) {
        if !self.carry.is_empty() || self.part > 0 {
            self.line(&[], false, emit);
        }
    }

    /// `bytes` ends a line (followed by a newline unless at end of stream).
    fn line(
        &mut self,
        bytes: &[u8],
        newline: bool,
        emit: &mut impl FnMut(&[u8], Option<Partial>, usize),
    ) {
        if self.carry.is_empty() && self.part == 0 && bytes.len() <= self.max {
            // The hot path: a whole line inside one read.
            emit(strip_cr(bytes), None, bytes.len() + usize::from(newline));
            return;
        }
        let rest = self.fill(bytes, emit);
        self.carry.extend_from_slice(rest);
        let partial = (self.part > 0).then_some(Partial {
            index: self.part,
            last: true,
        });
        let raw = self.carry.len() + usize::from(newline);
        emit(strip_cr(&self.carry), partial, raw);
        self.carry.clear();
        self.part = 0;
    }

    /// `bytes` continues a line whose end has not been read yet.
    fn unfinished(&mut self, bytes: &[u8], emit: &mut impl FnMut(&[u8], Option<Partial>, usize)) {
        let rest = self.fill(bytes, emit);
        self.carry.extend_from_slice(rest);
    }

    /// Emit full parts while carry + bytes exceed the limit; return what is left to carry.
    fn fill<'a>(
        &mut self,
        mut bytes: &'a [u8],
        emit: &mut impl FnMut(&[u8], Option<Partial>, usize),
    ) -> &'a [u8] {
        while self.carry.len() + bytes.len() > self.max {
            let take = self.max - self.carry.len();
            if self.carry.is_empty() {
                let cut = utf8_cut(&bytes[..=take]);
                emit(&bytes[..cut], Some(self.next_part()), cut);
                bytes = &bytes[cut..];
            } else {
                // The part is carry + the head of `bytes`; its cut may fall inside the carry
                // (a sequence that began in an earlier read), so look across both.
                let mut head = std::mem::take(&mut self.carry);
                head.extend_from_slice(&bytes[..take]);
                head.push(bytes[take]);
                let cut = utf8_cut(&head);
                let p = self.next_part();
                emit(&head[..cut], Some(p), cut);
                // What follows the cut (at most 3 bytes) begins the next part.
                head.truncate(self.max);
                self.carry = head.split_off(cut.min(self.max));
                bytes = &bytes[take..];
            }
        }
        bytes
    }

    fn next_part(&mut self) -> Partial {
        let p = Partial {
            index: self.part,
            last: false,
        };
        self.part = self.part.saturating_add(1);
        p
    }
}

/// Where to end a part of `window[..window.len() - 1]`, given the byte after it
/// (`window[window.len() - 1]`): before a UTF-8 sequence that would be cut, when its start
/// lies within the last 3 bytes; otherwise at full length (garbage is cut anywhere).
fn utf8_cut(window: &[u8]) -> usize {
    let full = window.len() - 1;
    let mut back = 0;
    while back < 3 && full > back && is_continuation(window[full - back]) {
        back += 1;
    }
    if full > back && !is_continuation(window[full - back]) {
        full - back
    } else {
        full
    }
}

fn is_continuation(b: u8) -> bool {
    b & 0b1100_0000 == 0b1000_0000
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(max: usize, reads: &[&[u8]], eof: bool) -> Vec<(Vec<u8>, Option<Partial>)> {
        let mut f = Framer::new(max);
        let mut out = Vec::new();
        let mut raw_total = 0;
        let mut emit = |b: &[u8], p: Option<Partial>, raw: usize| {
            raw_total += raw;
            out.push((b.to_vec(), p));
        };
        for r in reads {
            f.push(r, &mut emit);
            assert!(f.pending() <= max);
        }
        if eof {
            f.finish(&mut emit);
        }
        let fed: usize = reads.iter().map(|r| r.len()).sum();
        assert_eq!(
            raw_total + f.pending(),
            fed,
            "every input byte is accounted for"
        );
        out
    }

    fn lines(out: &[(Vec<u8>, Option<Partial>)]) -> Vec<&[u8]> {
        out.iter().map(|(b, _)| b.as_slice()).collect()
    }

    #[test]
    fn lines_across_reads_and_last_line_without_newline() {
        let out = frame(64, &[b"a\nbb", b"b\r\n\nc", b"cc"], true);
        assert_eq!(lines(&out), vec![&b"a"[..], b"bbb", b"", b"ccc"]);
        assert!(out.iter().all(|(_, p)| p.is_none()));
        // Without EOF, the unfinished line is held back.
        assert_eq!(frame(64, &[b"a\nb"], false).len(), 1);
    }

    #[test]
    fn long_line_is_split_into_bounded_parts() {
        let line = vec![b'x'; 50];
        let mut data = line.clone();
        data.extend_from_slice(b"\nok\n");
        // Fed one byte at a time and in one read: same result.
        let bytewise: Vec<&[u8]> = data.chunks(1).collect();
        for reads in [vec![&data[..]], bytewise] {
            let out = frame(16, &reads, true);
            let parts: Vec<_> = out.iter().map(|(b, p)| (b.len(), *p)).collect();
            assert_eq!(
                parts,
                vec![
                    (
                        16,
                        Some(Partial {
                            index: 0,
                            last: false
                        })
                    ),
                    (
                        16,
                        Some(Partial {
                            index: 1,
                            last: false
                        })
                    ),
                    (
                        16,
                        Some(Partial {
                            index: 2,
                            last: false
                        })
                    ),
                    (
                        2,
                        Some(Partial {
                            index: 3,
                            last: true
                        })
                    ),
                    (2, None),
                ]
            );
            let joined: Vec<u8> = out[..4].iter().flat_map(|(b, _)| b.clone()).collect();
            assert_eq!(joined, line);
        }
    }

    #[test]
    fn exact_limit_is_not_partial() {
        let out = frame(4, &[b"abcd", b"\n"], true);
        assert_eq!(out, vec![(b"abcd".to_vec(), None)]);
    }

    #[test]
    fn parts_do_not_cut_utf8_begun_in_an_earlier_read() {
        // A sequence whose lead byte was carried from the previous read is not split.
        let text = "aaaaaa€bbbbbbbbbb";
        let (a, b) = text.as_bytes().split_at(7);
        let out = frame(8, &[a, b], true);
        for (part, _) in &out {
            assert!(std::str::from_utf8(part).is_ok(), "{part:?}");
        }
        let joined: Vec<u8> = out.iter().flat_map(|(b, _)| b.clone()).collect();
        assert_eq!(joined, text.as_bytes());
        // Every read size and limit, over text of 1- to 4-byte characters.
        let text = "aé€😀".repeat(12);
        for max in 4..20 {
            for read in 1..12 {
                let reads: Vec<&[u8]> = text.as_bytes().chunks(read).collect();
                let out = frame(max, &reads, true);
                for (part, _) in &out {
                    assert!(part.len() <= max);
                    assert!(
                        std::str::from_utf8(part).is_ok(),
                        "max {max} read {read}: {part:?}"
                    );
                }
                let joined: Vec<u8> = out.iter().flat_map(|(b, _)| b.clone()).collect();
                assert_eq!(joined, text.as_bytes(), "max {max} read {read}");
            }
        }
    }

    #[test]
    fn parts_do_not_cut_utf8() {
        let line = "é".repeat(20); // 40 bytes, 2 bytes each
        let out = frame(7, &[line.as_bytes()], true);
        for (b, _) in &out {
            assert!(std::str::from_utf8(b).is_ok(), "{b:?}");
            assert!(b.len() <= 7);
        }
        let joined: Vec<u8> = out.iter().flat_map(|(b, _)| b.clone()).collect();
        assert_eq!(joined, line.as_bytes());
    }

    #[test]
    fn garbage_is_framed_without_panic() {
        let garbage: Vec<u8> = (0..10_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let out = frame(100, &garbage.chunks(333).collect::<Vec<_>>(), true);
        let total: usize = out.iter().map(|(b, _)| b.len()).sum();
        let newlines = garbage.iter().filter(|&&b| b == b'\n').count();
        let crs_stripped = garbage.len() - newlines - total;
        assert!(
            crs_stripped <= newlines,
            "only a \\r before a \\n is removed"
        );
    }
}
