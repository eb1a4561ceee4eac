//! The file sink: JSON lines in a file rotated by size and by age, keeping `keep` old files.
//!
//! Hand-written because no well-kept crate does what logrotate users expect of us together:
//! tracing-appender rotates by time only and cannot reopen, file-rotate rotates by one limit
//! only. Naming is logrotate's: `<path>` is active, `<path>.1` the newest rotated file,
//! `<path>.<keep>` the oldest. Invariant: a record is never split across two files, and a file
//! exceeds `max_size` only when a single record is larger than `max_size`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::super::config::FileSinkConfig;
use super::super::record::Record;
use super::json::JsonRenderer;
use super::Sink;

/// A rotating JSON-lines file.
pub struct FileSink {
    path: PathBuf,
    max_size: u64,
    rotate_every: Option<Duration>,
    keep: usize,
    out: BufWriter<File>,
    size: u64,
    opened: SystemTime,
    json: JsonRenderer,
    line: Vec<u8>,
}

// === impl FileSink ===

impl FileSink {
    /// Open (append to) the active file, creating its directory if needed.
    pub fn open(cfg: &FileSinkConfig) -> io::Result<Self> {
        if let Some(dir) = cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)?;
        }
        let (file, size) = open_append(&cfg.path)?;
        Ok(Self {
            path: cfg.path.clone(),
            max_size: cfg.max_size.as_u64(),
            rotate_every: cfg.rotate_every,
            keep: cfg.keep,
            out: BufWriter::with_capacity(64 * 1024, file),
            size,
            opened: SystemTime::now(),
            json: JsonRenderer::default(),
            line: Vec::with_capacity(1024),
        })
    }

    /// Close the active file, shift `<path>.N` to `<path>.N+1` (dropping the oldest), and
    /// start a new active file.
    fn rotate(&mut self) -> io::Result<()> {
        self.out.flush()?;
        if self.keep == 0 {
            remove_if_exists(&self.path)?;
        } else {
            remove_if_exists(&numbered(&self.path, self.keep))?;
            for n in (1..self.keep).rev() {
                rename_if_exists(&numbered(&self.path, n), &numbered(&self.path, n + 1))?;
            }
            rename_if_exists(&self.path, &numbered(&self.path, 1))?;
        }
        let (file, size) = open_append(&self.path)?;
        self.out = BufWriter::with_capacity(64 * 1024, file);
        self.size = size;
        self.opened = SystemTime::now();
        Ok(())
    }

    fn due_by_time(&self) -> bool {
        self.rotate_every
            .is_some_and(|every| self.opened.elapsed().is_ok_and(|age| age >= every))
    }
}

impl Sink for FileSink {
    fn write(&mut self, records: &[Record]) -> io::Result<()> {
        if self.size > 0 && self.due_by_time() {
            self.rotate()?;
        }
        for r in records {
            self.line.clear();
            self.json.render(r, &mut self.line);
            let len = self.line.len() as u64;
            if self.max_size > 0 && self.size > 0 && self.size + len > self.max_size {
                self.rotate()?;
            }
            self.out.write_all(&self.line)?;
            self.size += len;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// logrotate moved (or removed) the file: write to a new one at the configured path.
    fn reopen(&mut self) -> io::Result<()> {
        self.out.flush()?;
        let (file, size) = open_append(&self.path)?;
        self.out = BufWriter::with_capacity(64 * 1024, file);
        self.size = size;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<(File, u64)> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let size = file.metadata()?.len();
    Ok((file, size))
}

/// `<path>.<n>`.
pub fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn remove_if_exists(p: &Path) -> io::Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

fn rename_if_exists(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::logs::record::{Level, Origin, Stream};

    fn records(from: usize, n: usize) -> Vec<Record> {
        let origin = Arc::new(Origin {
            service: "s".into(),
            pid: None,
            restart_count: 0,
            resource_json: "{}".into(),
        });
        (from..from + n)
            .map(|i| {
                Record::new(
                    SystemTime::now(),
                    Stream::Stdout,
                    Level::Info,
                    format!("{i:06}"),
                    origin.clone(),
                )
            })
            .collect()
    }

    fn msgs(p: &Path) -> Vec<String> {
        fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).expect("json line")["msg"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn rotates_by_size_keeps_count_and_never_splits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("app.log");
        let cfg = FileSinkConfig {
            path: path.clone(),
            max_size: bytesize::ByteSize::b(1000),
            keep: 2,
            ..FileSinkConfig::default()
        };
        let mut s = FileSink::open(&cfg).expect("open");
        for i in 0..20 {
            s.write(&records(i * 10, 10)).expect("write");
        }
        s.flush().expect("flush");
        let active = msgs(&path);
        let one = msgs(&numbered(&path, 1));
        let two = msgs(&numbered(&path, 2));
        assert!(
            !numbered(&path, 3).exists(),
            "only `keep` rotated files remain"
        );
        for p in [&path, &numbered(&path, 1), &numbered(&path, 2)] {
            assert!(fs::metadata(p).expect("exists").len() <= 1000);
        }
        // Oldest to newest, the kept files hold the last lines in order, without gaps.
        let all: Vec<String> = two.into_iter().chain(one).chain(active).collect();
        let last = 199;
        let first = last + 1 - all.len();
        let want: Vec<String> = (first..=last).map(|i| format!("{i:06}")).collect();
        assert_eq!(all, want);
    }

    #[test]
    fn rotates_by_age() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("app.log");
        let cfg = FileSinkConfig {
            path: path.clone(),
            rotate_every: Some(Duration::from_secs(3600)),
            keep: 1,
            ..FileSinkConfig::default()
        };
        let mut s = FileSink::open(&cfg).expect("open");
        s.write(&records(0, 2)).expect("write");
        s.write(&records(2, 1)).expect("write");
        assert!(
            !numbered(&path, 1).exists(),
            "younger than rotate_every: no rotation"
        );
        // The file was opened two hours ago (set, not slept).
        s.opened = SystemTime::now() - Duration::from_secs(7200);
        s.write(&records(3, 1)).expect("write");
        s.flush().expect("flush");
        assert_eq!(
            msgs(&numbered(&path, 1)),
            vec!["000000", "000001", "000002"]
        );
        assert_eq!(msgs(&path), vec!["000003"]);
    }

    #[test]
    fn reopen_after_move() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("app.log");
        let cfg = FileSinkConfig {
            path: path.clone(),
            ..FileSinkConfig::default()
        };
        let mut s = FileSink::open(&cfg).expect("open");
        s.write(&records(0, 1)).expect("write");
        s.flush().expect("flush");
        fs::rename(&path, dir.path().join("moved")).expect("rename");
        s.reopen().expect("reopen");
        s.write(&records(1, 1)).expect("write");
        s.flush().expect("flush");
        assert_eq!(msgs(&path), vec!["000001"]);
        assert_eq!(msgs(&dir.path().join("moved")), vec!["000000"]);
    }
}
