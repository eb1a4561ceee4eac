//! Tail mode: follow log files written by someone else, in Nomad's naming
//! (`alloc/logs/<task>.stdout.<N>`, N rising on rotation, files never renamed, the lowest
//! deleted), and also a plain file rotated by rename or truncated in place.
//!
//! Invariant: a position is (file index, inode, offset) of the first byte not yet in a record
//! that every sink has written and flushed; only such positions are saved to the checkpoint
//! (after a barrier through all sinks), so a restarted tandem resumes exactly there: nothing
//! delivered is repeated, nothing skipped (after a crash, at most what was in flight repeats).
//! A line split across two files (Nomad cuts at a byte count) is joined: a sequence is one byte
//! stream. A new file N+1 is only switched to after N has been read to EOF *after* N+1 was seen.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use super::backpressure::Outlet;
use super::config::{LogRules, LogsConfig, StartAt, TailConfig};
use super::counters::Counters;
use super::enrich::LogContext;
use super::process::Processor;
use super::recent::Recent;
use super::record::Stream;
use super::sinks::worker::SinkHandle;
use super::LogsError;

/// Bytes read from one sequence per poll round before the others get a turn.
const ROUND_BYTES: usize = 4 * 1024 * 1024;
/// How long a barrier through the sinks may take before the checkpoint waits for the next round.
const BARRIER_WAIT: Duration = Duration::from_secs(5);

/// A saved position in one sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The `.N` of the file (0 for a file without one).
    pub index: u64,
    /// The file's inode (to tell a replaced file from the one we read).
    pub inode: u64,
    /// Offset of the first byte not yet delivered.
    pub offset: u64,
}

/// The checkpoint file: sequence base path → position.
pub type Checkpoint = BTreeMap<String, Position>;

/// Follows every sequence matched by the configured globs.
pub struct Follower {
    globs: Vec<String>,
    checkpoint_path: Option<PathBuf>,
    saved: Checkpoint,
    poll: Duration,
    start_at: StartAt,
    cfg: LogsConfig,
    rules: LogRules,
    ctx: LogContext,
    sinks: Vec<SinkHandle>,
    /// The app's recent records (the admin port's view); every sequence's outlet feeds it.
    tap: Option<Arc<Recent>>,
    counters: Arc<Counters>,
    seqs: BTreeMap<String, Sequence>,
    cancel: watch::Receiver<bool>,
    read_buf: Vec<u8>,
}

struct Sequence {
    base: String,
    processor: Processor,
    outlet: Outlet,
    open: Option<OpenFile>,
    /// Byte ranges fed to the processor, newest last, to map "undelivered" back to a position.
    segments: VecDeque<Segment>,
}

struct OpenFile {
    index: u64,
    path: PathBuf,
    file: File,
    inode: u64,
    offset: u64,
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    index: u64,
    inode: u64,
    start: u64,
    end: u64,
}

// === impl Follower ===

impl Follower {
    /// Load the checkpoint (a missing file is an empty one; a corrupt one is an error).
    pub fn new(
        tail: &TailConfig,
        cfg: &LogsConfig,
        rules: &LogRules,
        ctx: &LogContext,
        sinks: &[SinkHandle],
        counters: Arc<Counters>,
        cancel: watch::Receiver<bool>,
    ) -> Result<Self, LogsError> {
        let saved = match &tail.checkpoint {
            Some(p) => load_checkpoint(p)?,
            None => Checkpoint::new(),
        };
        // New sequences appear at any poll, each needing an outlet into every sink.
        let sinks = sinks.iter().map(SinkHandle::clone_sender).collect();
        Ok(Self {
            globs: tail.paths.clone(),
            checkpoint_path: tail.checkpoint.clone(),
            saved,
            poll: tail.poll_interval,
            start_at: tail.start_at,
            cfg: cfg.clone(),
            rules: rules.clone(),
            ctx: ctx.clone(),
            sinks,
            tap: None,
            counters,
            seqs: BTreeMap::new(),
            cancel,
            read_buf: vec![0; usize::try_from(cfg.read_buffer.as_u64()).unwrap_or(64 * 1024)],
        })
    }

    /// Also keep the records read in `recent` (the admin port's last records).
    pub fn with_tap(mut self, recent: Arc<Recent>) -> Self {
        self.tap = Some(recent);
        self
    }

    /// Start from `positions` (a previous image's, `tandem upgrade`) where they name a
    /// sequence, over what the checkpoint file says.
    pub fn with_positions(mut self, positions: Checkpoint) -> Self {
        self.saved.extend(positions);
        self
    }

    /// Poll until cancelled; then read what is there, deliver, and save the checkpoint.
    /// Returns every sequence's position (delivered and flushed up to there), for a next
    /// image of tandem to go on from.
    pub async fn run(mut self) -> Checkpoint {
        let mut tick = tokio::time::interval(self.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stop = tokio::select! {
                biased;
                _ = self.cancel.wait_for(|c| *c) => true,
                _ = tick.tick() => false,
            };
            self.round(stop).await;
            if stop {
                break;
            }
        }
        self.saved
    }

    /// One poll: discover files, read every sequence, deliver, checkpoint.
    async fn round(&mut self, stop: bool) {
        let files = self.discover();
        let mut moved = false;
        for (base, list) in files {
            if !self.seqs.contains_key(&base) {
                let s = self.sequence(&base);
                self.seqs.insert(base.clone(), s);
            }
            let saved = self.saved.get(&base).copied();
            let start_at = self.start_at;
            let seq = self.seqs.get_mut(&base).expect("inserted above");
            let buf = &mut self.read_buf;
            match blocking(|| seq.read(&list, saved, start_at, buf)) {
                Ok(n) => moved |= n > 0,
                Err(e) => tracing::warn!(file = %base, error = %e, "log tail: read failed"),
            }
            let now = Instant::now();
            seq.processor.tick(now);
            if stop {
                seq.processor.flush_merged();
            }
            seq.outlet.send_all(seq.processor.take()).await;
        }
        // Without a checkpoint file positions matter only at the end (for `tandem upgrade`).
        let due = moved || self.saved.len() < self.seqs.len();
        if stop || (due && self.checkpoint_path.is_some()) {
            self.checkpoint().await;
        }
    }

    /// Group the glob matches into sequences: base path → [(index, path)] sorted by index.
    fn discover(&self) -> BTreeMap<String, Vec<(u64, PathBuf)>> {
        let mut out: BTreeMap<String, Vec<(u64, PathBuf)>> = BTreeMap::new();
        for g in &self.globs {
            let Ok(paths) = glob::glob(g) else { continue };
            for p in paths.flatten() {
                if !p.is_file() || self.checkpoint_path.as_deref() == Some(p.as_path()) {
                    continue;
                }
                let (base, index) = split_index(&p);
                out.entry(base).or_default().push((index, p));
            }
        }
        for list in out.values_mut() {
            list.sort();
            list.dedup();
        }
        out
    }

    fn sequence(&self, base: &str) -> Sequence {
        let stream = if Path::new(base)
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains("stderr"))
        {
            Stream::Stderr
        } else {
            Stream::Stdout
        };
        let mut statics = self.cfg.attributes.clone();
        statics.insert("log.file.path".into(), base.to_string());
        let origin = self.ctx.origin(&statics, None);
        Sequence {
            base: base.to_string(),
            processor: Processor::new(
                &self.cfg,
                &self.rules,
                stream,
                origin.clone(),
                self.counters.clone(),
            ),
            outlet: match &self.tap {
                Some(t) => Outlet::new(&self.sinks, stream).with_tap(t.clone()),
                None => Outlet::new(&self.sinks, stream),
            },
            open: None,
            segments: VecDeque::new(),
        }
    }

    /// Wait until the sinks have flushed what was sent, then save every sequence's position.
    async fn checkpoint(&mut self) {
        let deadline = Instant::now() + BARRIER_WAIT;
        for seq in self.seqs.values() {
            if !seq.outlet.barrier(deadline).await {
                tracing::warn!("log tail: sinks did not confirm in time; checkpoint not advanced");
                return;
            }
        }
        for seq in self.seqs.values() {
            if let Some(p) = seq.position() {
                self.saved.insert(seq.base.clone(), p);
            }
        }
        let Some(path) = &self.checkpoint_path else {
            return;
        };
        if let Err(e) = save_checkpoint(path, &self.saved) {
            tracing::warn!(error = %e, "log tail: checkpoint not saved");
        }
    }
}

// === impl Sequence ===

impl Sequence {
    /// Read new bytes of this sequence (at most [`ROUND_BYTES`]), following rotation and
    /// truncation. Returns the number of bytes read.
    fn read(
        &mut self,
        list: &[(u64, PathBuf)],
        saved: Option<Position>,
        start_at: StartAt,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        if self.open.is_none() {
            self.open = start(list, saved, start_at)?;
        }
        let mut total = 0;
        while total < ROUND_BYTES {
            let Some(open) = self.open.as_mut() else {
                return Ok(total);
            };
            // Seen before reading to EOF: once N+1 exists, N is complete.
            let next = list.iter().find(|(i, _)| *i > open.index).cloned();
            let len = open.file.metadata()?.len();
            if len < open.offset {
                tracing::info!(file = %open.path.display(), "log tail: file truncated; reading it from the start");
                open.file.seek(SeekFrom::Start(0))?;
                open.offset = 0;
            }
            let n = read_some(&mut open.file, buf)?;
            if n > 0 {
                let seg_start = open.offset;
                open.offset += n as u64;
                total += n;
                let (index, inode, end) = (open.index, open.inode, open.offset);
                self.processor.push(&buf[..n], Instant::now());
                self.note(Segment {
                    index,
                    inode,
                    start: seg_start,
                    end,
                });
                continue;
            }
            // At EOF: move on to the next file, or to a new file at the same path (rename rotation).
            if let Some((index, path)) = next {
                self.open = Some(open_at(index, &path, 0)?);
                continue;
            }
            match fs::metadata(&open.path) {
                Ok(m) if m.ino() != open.inode => {
                    let (index, path) = (open.index, open.path.clone());
                    self.open = Some(open_at(index, &path, 0)?);
                }
                _ => return Ok(total),
            }
        }
        Ok(total)
    }

    /// Remember that `seg` went into the processor; forget ranges already delivered.
    fn note(&mut self, seg: Segment) {
        match self.segments.back_mut() {
            Some(last)
                if last.index == seg.index && last.inode == seg.inode && last.end == seg.start =>
            {
                last.end = seg.end
            }
            _ => self.segments.push_back(seg),
        }
        let undelivered = self.processor.undelivered() as u64;
        while self.segments.len() > 1 {
            let newer: u64 = self.segments.iter().skip(1).map(|s| s.end - s.start).sum();
            if newer >= undelivered {
                self.segments.pop_front();
            } else {
                break;
            }
        }
    }

    /// The position of the first byte not yet in a delivered record.
    fn position(&self) -> Option<Position> {
        let mut u = self.processor.undelivered() as u64;
        for s in self.segments.iter().rev() {
            let len = s.end - s.start;
            if u <= len {
                return Some(Position {
                    index: s.index,
                    inode: s.inode,
                    offset: s.end - u,
                });
            }
            u -= len;
        }
        match self.segments.front() {
            Some(s) => Some(Position {
                index: s.index,
                inode: s.inode,
                offset: s.start,
            }),
            // Nothing read in this run: where the file is open (e.g. `start_at = "end"`), so a
            // restart does not skip what was written meanwhile.
            None => self.open.as_ref().map(|o| Position {
                index: o.index,
                inode: o.inode,
                offset: o.offset,
            }),
        }
    }
}

/// Run file I/O off the async scheduler's hot path: on a multi-threaded runtime the worker
/// hands its other tasks away first (`block_in_place`); on a current-thread runtime (tests)
/// there is no one to hand them to, and a bounded read (`ROUND_BYTES`) runs in place.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Where to start reading a sequence seen for the first time.
fn start(
    list: &[(u64, PathBuf)],
    saved: Option<Position>,
    start_at: StartAt,
) -> io::Result<Option<OpenFile>> {
    if let Some(p) = saved {
        if let Some((i, path)) = list.iter().find(|(i, _)| *i == p.index) {
            let same = fs::metadata(path).is_ok_and(|m| m.ino() == p.inode && m.len() >= p.offset);
            return open_at(*i, path, if same { p.offset } else { 0 }).map(Some);
        }
        if let Some((i, path)) = list.iter().find(|(i, _)| *i > p.index) {
            return open_at(*i, path, 0).map(Some);
        }
        // Everything we knew is gone and nothing newer exists yet: wait for the next file.
        return Ok(None);
    }
    match start_at {
        StartAt::Beginning => list.first().map(|(i, p)| open_at(*i, p, 0)).transpose(),
        StartAt::End => list
            .last()
            .map(|(i, p)| {
                let len = fs::metadata(p)?.len();
                open_at(*i, p, len)
            })
            .transpose(),
    }
}

fn open_at(index: u64, path: &Path, offset: u64) -> io::Result<OpenFile> {
    let mut file = File::open(path)?;
    let inode = file.metadata()?.ino();
    file.seek(SeekFrom::Start(offset))?;
    Ok(OpenFile {
        index,
        path: path.to_path_buf(),
        file,
        inode,
        offset,
    })
}

fn read_some(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match file.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

/// `a/web.stdout.12` → (`a/web.stdout`, 12); a name without a numeric suffix is index 0.
fn split_index(p: &Path) -> (String, u64) {
    let s = p.to_string_lossy();
    if let Some((base, n)) = s.rsplit_once('.') {
        if !n.is_empty() && n.len() <= 19 && n.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(i) = n.parse() {
                return (base.to_string(), i);
            }
        }
    }
    (s.into_owned(), 0)
}

fn load_checkpoint(path: &Path) -> Result<Checkpoint, LogsError> {
    let err = |source| LogsError::Checkpoint {
        path: path.to_path_buf(),
        source,
    };
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| err(io::Error::new(io::ErrorKind::InvalidData, e))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Checkpoint::new()),
        Err(e) => Err(err(e)),
    }
}

/// Write atomically: a crash leaves the old checkpoint or the new one, never half of one.
fn save_checkpoint(path: &Path, cp: &Checkpoint) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let json = serde_json::to_vec_pretty(cp).map_err(io::Error::other)?;
    {
        use std::io::Write;
        let mut f = File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::logs::config::FileSinkConfig;
    use crate::logs::Pipeline;

    /// Appends numbered lines to Nomad-style files: `<base>.N`, a new N when `max` bytes are
    /// reached, cutting a line across two files as Nomad's rotator does.
    struct NomadWriter {
        base: PathBuf,
        index: u64,
        max: usize,
        next: usize,
    }

    impl NomadWriter {
        fn write_lines(&mut self, n: usize) {
            let mut data = Vec::new();
            for _ in 0..n {
                data.extend_from_slice(format!("line {:06}\n", self.next).as_bytes());
                self.next += 1;
            }
            let mut rest = &data[..];
            while !rest.is_empty() {
                let path = PathBuf::from(format!("{}.{}", self.base.display(), self.index));
                let size = fs::metadata(&path).map_or(0, |m| m.len() as usize);
                if size >= self.max {
                    self.index += 1;
                    continue;
                }
                let take = rest.len().min(self.max - size);
                let mut f = fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .expect("open");
                f.write_all(&rest[..take]).expect("write");
                rest = &rest[take..];
            }
        }
    }

    fn config(dir: &Path) -> LogsConfig {
        let mut cfg = LogsConfig::default();
        cfg.sinks.stdout.enabled = false;
        cfg.sinks.file = Some(FileSinkConfig {
            path: dir.join("out.log"),
            ..FileSinkConfig::default()
        });
        cfg.tail = Some(TailConfig {
            paths: vec![format!("{}/logs/web.stdout.*", dir.display())],
            checkpoint: Some(dir.join("checkpoint.json")),
            poll_interval: Duration::from_millis(10),
            start_at: StartAt::Beginning,
        });
        cfg
    }

    /// Run a tandem-like pipeline over the tail until `want` records reached the file sink.
    async fn run_until(cfg: &LogsConfig, want: u64) {
        let ctx = LogContext::from_parts("web".into(), None, None, &[]);
        let p = Pipeline::start(cfg, ctx).expect("start");
        p.tail().expect("tail");
        for _ in 0..2000 {
            if p.snapshot().sinks[0].records_out >= want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        p.finish_readers(Instant::now() + Duration::from_secs(5))
            .await;
        assert!(p.shutdown(Duration::from_secs(5)).await);
    }

    fn delivered(dir: &Path) -> Vec<String> {
        fs::read_to_string(dir.join("out.log"))
            .expect("sink file")
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("json line");
                assert_eq!(v["stream"], "stdout");
                v["msg"].as_str().expect("msg").to_string()
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn follows_nomad_rotation_across_a_restart_without_loss_or_repeat() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("logs")).expect("mkdir");
        let cfg = config(dir.path());
        let mut w = NomadWriter {
            base: dir.path().join("logs/web.stdout"),
            index: 0,
            max: 1000,
            next: 0,
        };
        // First run: three files, the last line unfinished (the writer is mid-line).
        w.write_lines(250);
        fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(format!("logs/web.stdout.{}", w.index)))
            .and_then(|mut f| f.write_all(b"line 000"))
            .expect("half a line");
        run_until(&cfg, 250).await;
        assert_eq!(delivered(dir.path()).len(), 250);

        // Between runs: the line is finished, more lines rotate into new files, and Nomad
        // deletes the oldest file (max_files).
        let last = PathBuf::from(format!("{}.{}", w.base.display(), w.index));
        fs::OpenOptions::new()
            .append(true)
            .open(&last)
            .and_then(|mut f| f.write_all(b"250\n"))
            .expect("finish line");
        w.next = 251;
        w.write_lines(249);
        fs::remove_file(dir.path().join("logs/web.stdout.0")).expect("rotate away the oldest");
        run_until(&cfg, 250).await;

        let got = delivered(dir.path());
        let want: Vec<String> = (0..500).map(|i| format!("line {i:06}")).collect();
        assert_eq!(got, want);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn start_at_end_skips_old_lines_but_not_those_written_while_stopped() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("logs")).expect("mkdir");
        let mut cfg = config(dir.path());
        if let Some(t) = cfg.tail.as_mut() {
            t.start_at = StartAt::End;
        }
        let f = dir.path().join("logs/web.stdout.0");
        fs::write(&f, "old\n").expect("write");
        run_until(&cfg, 0).await;
        fs::OpenOptions::new()
            .append(true)
            .open(&f)
            .and_then(|mut h| h.write_all(b"new\n"))
            .expect("append");
        run_until(&cfg, 1).await;
        assert_eq!(delivered(dir.path()), vec!["new"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn truncated_file_is_read_again_from_the_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("logs")).expect("mkdir");
        let cfg = config(dir.path());
        let f = dir.path().join("logs/web.stdout.0");
        fs::write(&f, "aaaa\nbbbb\n").expect("write");
        let ctx = LogContext::from_parts("web".into(), None, None, &[]);
        let p = Pipeline::start(&cfg, ctx).expect("start");
        p.tail().expect("tail");
        let wait_for = |n: u64| {
            let p = &p;
            async move {
                for _ in 0..2000 {
                    if p.snapshot().sinks[0].records_out >= n {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        wait_for(2).await;
        // copytruncate: the file is emptied in place and written again (shorter than before).
        fs::write(&f, "c\n").expect("truncate and write");
        wait_for(3).await;
        fs::OpenOptions::new()
            .append(true)
            .open(&f)
            .and_then(|mut h| h.write_all(b"d\n"))
            .expect("append");
        wait_for(4).await;
        p.finish_readers(Instant::now() + Duration::from_secs(5))
            .await;
        assert!(p.shutdown(Duration::from_secs(5)).await);
        assert_eq!(delivered(dir.path()), vec!["aaaa", "bbbb", "c", "d"]);
    }

    #[test]
    fn nomad_names_split_into_base_and_index() {
        assert_eq!(
            split_index(Path::new("/a/logs/web.stdout.12")),
            ("/a/logs/web.stdout".into(), 12)
        );
        assert_eq!(
            split_index(Path::new("/a/app.log")),
            ("/a/app.log".into(), 0)
        );
    }
}
