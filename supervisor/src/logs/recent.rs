//! The recent-records tap: the app's last [`RECENT_RECORDS`] records, as the admin port's
//! `/status` and status page show them.
//!
//! Fed by the app's readers (pipes and tail files, not the proxy's access log) in
//! [`crate::logs::backpressure::Outlet::send`], with the batch every sink gets: after
//! `redact`, so a secret the rules hide never reaches the ring. Cheap on purpose: the reader
//! only clones the batch's `Arc` into the ring under a lock held for that push (rendering
//! waits until someone asks). Invariant: the ring holds the newest batches covering at most
//! `cap` records plus one batch (`logs.batch_records`; the batches are the ones the sinks'
//! queues share), and a snapshot returns at most `cap`, each cut to [`MAX_SHOWN_BYTES`].

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

/// The last batches, newest last. Shared by the readers (writers) and the admin port (reader).
#[derive(Debug)]
pub struct Recent {
    cap: usize,
    ring: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    batches: VecDeque<Arc<Vec<Record>>>,
    /// Records in `batches`.
    held: usize,
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
        let mut ring = self.ring.lock().expect("recent records lock poisoned");
        ring.held += batch.len();
        ring.batches.push_back(batch.clone());
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
        let batches: Vec<Arc<Vec<Record>>> = self
            .ring
            .lock()
            .expect("recent records lock poisoned")
            .batches
            .iter()
            .cloned()
            .collect();
        let mut out: Vec<Value> = batches
            .iter()
            .rev()
            .flat_map(|b| b.iter().rev())
            .take(self.cap)
            .map(render)
            .collect();
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
