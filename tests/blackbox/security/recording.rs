//! A tandem in front of `recorder.py`, an app that records the exact bytes it receives, and a
//! raw-socket client: what the edge lets through is read from the app's side of the wire.
use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
};

use crate::support::{free_port, Tandem, PATIENCE};

/// tandem (one HTTP listener) in front of the recording app.
pub struct Edge {
    pub t: Tandem,
    pub proxy: String,
    /// Where the app writes `conn-<n>.raw` and `ambiguous`.
    pub out: PathBuf,
    _dir: tempfile::TempDir,
}

/// The recording app's script.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/blackbox/security/recorder.py")
}

impl Edge {
    /// Starts tandem with `listener_extra` appended to the `[[proxy.listeners]]` table (and
    /// `extra` after it, for sub-tables), and waits until the app is ready.
    pub fn start(listener_extra: &str, extra: &str) -> Option<Edge> {
        if !crate::support::require_tool("python3") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("recorded");
        let port = free_port();
        let cfg = dir.path().join("tandem.toml");
        std::fs::write(
            &cfg,
            format!(
                r#"
[app]
command = ["python3", "{script}", "{port}", "{out}"]
stop_timeout = "2s"
[admin]
listen = ""
[health.readiness]
kind = "tcp"
target = "127.0.0.1:{port}"
interval = "50ms"
timeout = "500ms"
[[proxy.listeners]]
name = "web"
listen = "127.0.0.1:0"
upstream = "127.0.0.1:{port}"
{listener_extra}
{extra}
"#,
                script = script().display(),
                out = out.display(),
            ),
        )
        .unwrap();
        let mut t = Tandem::spawn(&["--config", cfg.to_str().unwrap()]);
        t.collect_stdout();
        let proxy = t.wait_event("proxy_listening")["addr"]
            .as_str()
            .unwrap()
            .to_string();
        t.wait_event("ready");
        Some(Edge {
            t,
            proxy,
            out,
            _dir: dir,
        })
    }

    /// Sends `raw` on a fresh connection and returns everything tandem answers until it
    /// closes the connection (send `Connection: close`, or a request it refuses).
    pub fn send(&self, raw: &[u8]) -> String {
        let mut s = TcpStream::connect(&self.proxy).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s.write_all(raw).unwrap();
        let mut got = Vec::new();
        // A reset after tandem's answer is fine: what was read is the answer.
        let _ = s.read_to_end(&mut got);
        String::from_utf8_lossy(&got).into_owned()
    }

    /// Every byte the app has received so far, all connections, lowercased.
    pub fn received(&self) -> String {
        let mut all = String::new();
        let mut files: Vec<_> = std::fs::read_dir(&self.out)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        for f in files {
            if f.extension().is_some_and(|e| e == "raw") {
                all.push_str(&String::from_utf8_lossy(&std::fs::read(&f).unwrap()));
            }
        }
        all.to_ascii_lowercase()
    }

    /// Requests the app could not frame unambiguously (it answered them 400).
    pub fn ambiguous(&self) -> String {
        std::fs::read(self.out.join("ambiguous"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The access-log records so far.
    pub fn access(&self) -> Vec<serde_json::Value> {
        self.t
            .records()
            .into_iter()
            .filter(|r| r["fields"]["kind"] == "access")
            .collect()
    }

    /// A request head as the app received it: the lines of the request to `path`.
    pub fn head_of(&self, path: &str) -> Vec<String> {
        let all = self.received();
        let start = format!(" {path} http/1.1\r\n");
        let Some(at) = all.find(&start) else {
            return Vec::new();
        };
        let head = &all[at..];
        let end = head.find("\r\n\r\n").unwrap_or(head.len());
        head[..end].lines().skip(1).map(str::to_string).collect()
    }
}

/// The values of header `name` (lowercase) in a head from [`Edge::head_of`].
pub fn values(head: &[String], name: &str) -> Vec<String> {
    head.iter()
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            (n.trim() == name).then(|| v.trim().to_string())
        })
        .collect()
}

/// An HS256 JWT for `claims` (JSON), signed with `secret`, made by python3's hmac (the test
/// crate has no JWT library).
pub fn hs256(secret: &str, claims: &str) -> String {
    let code = r#"
import base64, hashlib, hmac, sys
b = lambda d: base64.urlsafe_b64encode(d).rstrip(b"=")
msg = b(b'{"alg":"HS256","typ":"JWT","kid":"k1"}') + b"." + b(sys.argv[2].encode())
sig = b(hmac.new(sys.argv[1].encode(), msg, hashlib.sha256).digest())
print((msg + b"." + sig).decode())
"#;
    let out = Command::new("python3")
        .args(["-c", code, secret, claims])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
