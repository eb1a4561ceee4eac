//! The recent-records tap: the app's last [`RECENT_RECORDS`] records, as the admin port's
//! `/status` and status page show them.
//!
//! Fed by the app's readers (pipes and tail files, not the proxy's access log) in
//! [`crate::logs::backpressure::Outlet::send`], with the batch every sink gets: after
//! `redact`, so a secret the rules hide never reaches the ring. Cheap on purpose: the reader
//! only clones the batch's `Arc` into the ring under a lock held for that push (rendering
//! waits until someone asks). A batch with more than [`KEEP_BATCH_BYTES`] of text (long lines)
//! is not kept whole: its last `cap` records are rendered (cut) at once and only those kept.
//! Invariant: the ring holds the newest batches covering at most `cap` records plus one batch,
//! each kept batch at most [`KEEP_BATCH_BYTES`] of text (so at most `cap` x 64 KiB in all,
//! whatever `logs.max_line_bytes` and `logs.batch_records` are), and a snapshot returns at
//! most `cap`, each cut to [`MAX_SHOWN_BYTES`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use super::record::Record;
use super::sinks::json::format_time;

/// How many records the status page and `/status` show.
pub const RECENT_RECORDS: usize = 50;
/// A message longer than this is shown cut (at a character boundary, `truncated: true`), and
/// fields whose JSON text is longer are left out (`fields_truncated: true`): 50 records of
/// `max_line_bytes` would not fit `/status` (nor `tandem status`'s 1 MiB read).
pub const MAX_SHOWN_BYTES: usize = 2048;
/// A batch with at most this much text (messages and fields) is kept as it is, shared with the
/// sinks (an `Arc` clone); a larger one only as its last records, rendered. Typical batches
/// (256 lines of up to 250 bytes) take the cheap way.
pub const KEEP_BATCH_BYTES: usize = 64 * 1024;

/// The last batches, newest last. Shared by the readers (writers) and the admin port (reader).
#[derive(Debug)]
pub struct Recent {
    cap: usize,
    ring: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    batches: VecDeque<Held>,
    /// Records in `batches`.
    held: usize,
}

/// One batch in the ring.
#[derive(Debug, Clone)]
enum Held {
    /// The batch the sinks got, shared.
    Batch(Arc<Vec<Record>>),
    /// The last records of a batch too large to keep, already rendered.
    Shown(Arc<Vec<Value>>),
}

impl Held {
    fn len(&self) -> usize {
        match self {
            Held::Batch(b) => b.len(),
            Held::Shown(v) => v.len(),
        }
    }
}

/// The text a batch holds: its messages and fields.
fn text_bytes(batch: &[Record]) -> usize {
    batch
        .iter()
        .map(|r| r.msg.len() + r.fields.as_ref().map_or(0, |f| f.as_json().len()))
        .sum()
}

// === impl Recent ===

impl Recent {
    /// An empty ring showing at most `cap` records.
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap,
            ring: Mutex::new(Ring::default()),
        })
    }

    /// Keep `batch` (already redacted), letting go of the oldest batches no longer needed to
    /// show `cap` records.
    pub fn push(&self, batch: &Arc<Vec<Record>>) {
        if self.cap == 0 || batch.is_empty() {
            return;
        }
        let kept = if text_bytes(batch) <= KEEP_BATCH_BYTES {
            Held::Batch(batch.clone())
        } else {
            let tail = &batch[batch.len().saturating_sub(self.cap)..];
            Held::Shown(Arc::new(tail.iter().map(render).collect()))
        };
        let mut ring = self.ring.lock().expect("recent records lock poisoned");
        ring.held += kept.len();
        ring.batches.push_back(kept);
        while let Some(front) = ring.batches.front() {
            if ring.held - front.len() < self.cap {
                break;
            }
            ring.held -= front.len();
            ring.batches.pop_front();
        }
    }

    /// Records held now (at most `cap` plus one batch).
    pub fn held(&self) -> usize {
        self.ring.lock().expect("recent records lock poisoned").held
    }

    /// The newest `cap` records, oldest first, as JSON objects (`time`, `level`, `stream`,
    /// `pid` when known, `msg`, `fields` when present).
    pub fn snapshot(&self) -> Vec<Value> {
        let batches: Vec<Held> = self
            .ring
            .lock()
            .expect("recent records lock poisoned")
            .batches
            .iter()
            .cloned()
            .collect();
        let mut out: Vec<Value> = Vec::with_capacity(self.cap);
        for held in batches.iter().rev() {
            let want = self.cap - out.len();
            match held {
                Held::Batch(b) => out.extend(b.iter().rev().take(want).map(render)),
                Held::Shown(v) => out.extend(v.iter().rev().take(want).cloned()),
            }
            if out.len() == self.cap {
                break;
            }
        }
        out.reverse();
        out
    }
}

fn render(r: &Record) -> Value {
    let mut m = Map::new();
    m.insert(
        "time".into(),
        Value::from(format_time(r.time.unwrap_or(r.observed))),
    );
    m.insert("level".into(), Value::from(r.level.as_str()));
    m.insert("stream".into(), Value::from(r.stream.as_str()));
    if let Some(pid) = r.origin.pid {
        m.insert("pid".into(), Value::from(pid));
    }
    if r.msg.len() > MAX_SHOWN_BYTES {
        let mut end = MAX_SHOWN_BYTES;
        while !r.msg.is_char_boundary(end) {
            end -= 1;
        }
        m.insert("msg".into(), Value::from(&r.msg[..end]));
        m.insert("truncated".into(), Value::from(true));
    } else {
        m.insert("msg".into(), Value::from(r.msg.as_str()));
    }
    match &r.fields {
        Some(f) if f.as_json().len() > MAX_SHOWN_BYTES => {
            m.insert("fields_truncated".into(), Value::from(true));
        }
        Some(f) => {
            m.insert("fields".into(), Value::Object(f.to_map()));
        }
        None => {}
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::logs::record::{Fields, Level, Origin, Stream};

    fn record(msg: &str) -> Record {
        let origin = Arc::new(Origin {
            service: "web".into(),
            pid: Some(7),
            restart_count: 0,
            resource_json: "{}".into(),
        });
        Record::new(
            SystemTime::now(),
            Stream::Stdout,
            Level::Info,
            msg.into(),
            origin,
        )
    }

    fn batch(msgs: &[&str]) -> Arc<Vec<Record>> {
        Arc::new(msgs.iter().map(|m| record(m)).collect())
    }

    fn msgs(r: &Recent) -> Vec<String> {
        r.snapshot()
            .iter()
            .map(|v| v["msg"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn shows_at_most_its_capacity_newest_last() {
        let recent = Recent::new(3);
        recent.push(&batch(&["a", "b"]));
        assert_eq!(msgs(&recent), ["a", "b"]);
        recent.push(&batch(&["c", "d"]));
        assert_eq!(msgs(&recent), ["b", "c", "d"]);
        // A batch larger than the ring: only its tail is shown, older batches let go.
        let big: Vec<String> = (0..10).map(|i| i.to_string()).collect();
        let big: Vec<&str> = big.iter().map(String::as_str).collect();
        recent.push(&batch(&big));
        assert_eq!(msgs(&recent), ["7", "8", "9"]);
        assert_eq!(recent.held(), 10);
        assert_eq!(recent.snapshot()[0]["pid"], 7);
        assert_eq!(recent.snapshot()[0]["level"], "INFO");
    }

    #[test]
    fn holds_at_most_cap_plus_one_batch() {
        let recent = Recent::new(50);
        for i in 0..1000 {
            recent.push(&batch(&["x"; 7]));
            assert!(
                recent.held() < 50 + 7,
                "after {i} batches: {}",
                recent.held()
            );
        }
        assert_eq!(recent.snapshot().len(), 50);
    }

    #[test]
    fn a_batch_of_long_lines_is_kept_only_as_its_shown_tail() {
        let recent = Recent::new(3);
        recent.push(&batch(&["old"]));
        // 100 lines of 64 KiB: 6.4 MB of text, of which 3 records cut to 2 KiB are kept.
        let long = "y".repeat(64 * 1024);
        let big = Arc::new((0..100).map(|_| record(&long)).collect::<Vec<_>>());
        recent.push(&big);
        drop(big);
        let ring = recent.ring.lock().unwrap();
        assert!(
            matches!(ring.batches.back(), Some(Held::Shown(v)) if v.len() == 3),
            "{:?}",
            ring.batches.back().map(Held::len)
        );
        drop(ring);
        let shown = recent.snapshot();
        assert_eq!(shown.len(), 3);
        assert!(
            shown
                .iter()
                .all(|v| v["truncated"] == true
                    && v["msg"].as_str().unwrap().len() == MAX_SHOWN_BYTES)
        );
        // Small batches after it are shared again, and shown after it.
        recent.push(&batch(&["new"]));
        assert!(matches!(
            recent.ring.lock().unwrap().batches.back(),
            Some(Held::Batch(_))
        ));
        assert_eq!(recent.snapshot().last().unwrap()["msg"], "new");
    }

    #[test]
    fn keeps_fields_as_they_were_redacted() {
        let recent = Recent::new(5);
        let mut r = record("login");
        let mut m = Map::new();
        m.insert("password".into(), "[REDACTED]".into());
        r.fields = Some(Fields::from_map(&m));
        recent.push(&Arc::new(vec![r]));
        let got = recent.snapshot();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["fields"]["password"], "[REDACTED]");
    }

    #[test]
    fn long_messages_and_fields_are_cut_for_showing() {
        let recent = Recent::new(5);
        let mut r = record(&"é".repeat(MAX_SHOWN_BYTES));
        let mut m = Map::new();
        m.insert("blob".into(), "x".repeat(MAX_SHOWN_BYTES).into());
        r.fields = Some(Fields::from_map(&m));
        recent.push(&Arc::new(vec![r, record("short")]));
        let got = recent.snapshot();
        let msg = got[0]["msg"].as_str().unwrap();
        assert!(msg.len() <= MAX_SHOWN_BYTES && msg.len() > MAX_SHOWN_BYTES - 2);
        assert_eq!(got[0]["truncated"], true);
        assert!(got[0].get("fields").is_none());
        assert_eq!(got[0]["fields_truncated"], true);
        assert!(got[1].get("truncated").is_none());
    }

    #[test]
    fn zero_capacity_holds_nothing() {
        let recent = Recent::new(0);
        recent.push(&batch(&["a"]));
        assert!(recent.snapshot().is_empty());
        assert_eq!(recent.held(), 0);
    }
}
