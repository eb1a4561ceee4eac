//! Eight bytes at a time: the usual SWAR tests on a `u64` loaded from eight bytes (Hacker's
//! Delight, 6-1), each exact as a yes/no answer for the whole word. The hot loops of the log
//! path (logfmt's token scan, JSON's escape check) skip eight plain bytes per test with them.

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The first eight bytes of `c` (which has at least eight) as a word.
pub(crate) fn load(c: &[u8]) -> u64 {
    u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
}

/// Whether a byte of `x` is below `n` (`n` at most 0x80).
pub(crate) fn any_below(x: u64, n: u8) -> bool {
    x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH != 0
}

/// Whether a byte of `x` is `b`.
pub(crate) fn any_eq(x: u64, b: u8) -> bool {
    any_below(x ^ (ONES * u64::from(b)), 1)
}

/// Whether a byte of `x` is not ASCII.
pub(crate) fn any_high(x: u64) -> bool {
    x & HIGH != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_test_answers_as_a_byte_loop_would() {
        // One byte of every value at every position among fillers that pass every test, and
        // a word of bytes that borrow across each other (0x01 next to 0x00, 0x80 next to 0x7f).
        for at in 0..8 {
            for b in 0..=255u8 {
                for filler in [b'a', 0x7f, 0x21, b'~'] {
                    let mut w = [filler; 8];
                    w[at] = b;
                    let x = load(&w);
                    for n in [1u8, 0x20, 0x21, 0x80] {
                        assert_eq!(any_below(x, n), w.iter().any(|&c| c < n), "{w:?} < {n}");
                    }
                    for e in [b'"', b'=', b'\\', 0] {
                        assert_eq!(any_eq(x, e), w.contains(&e), "{w:?} == {e}");
                    }
                    assert_eq!(any_high(x), w.iter().any(|&c| c >= 0x80));
                }
            }
        }
        let w = [0x01, 0x00, 0x80, 0x7f, 0x02, 0x01, 0xff, 0x20];
        assert!(any_below(load(&w), 1) && any_eq(load(&w), 0x7f) && !any_eq(load(&w), b'='));
    }
}
