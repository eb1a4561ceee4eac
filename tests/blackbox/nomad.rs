//! The Nomad sidecar job (`nomad/sidecar.nomad.hcl`), simulated faithfully since Nomad itself
//! cannot run here: an alloc dir laid out as Nomad lays it out, the NOMAD_* variables Nomad
//! sets, the app task writing through a Nomad-style rotating logger, and tandem started first
//! (prestart sidecar) with the config rendered from the job's own `template` stanza.
//!
//! [`NomadLogger`] stands in for Nomad's logmon: it writes a task's output to
//! `alloc/logs/<task>.<stream>.N`, N from 0, a new file at N+1 once `max_file_size` bytes are
//! written (cutting a line in two, as logmon does), deleting the lowest index past
//! `max_files`. Files are never renamed.
//!
//! Rendering differs from Nomad's in one way: `0.0.0.0` becomes `127.0.0.1`, so the test binds
//! loopback only (in Nomad the group's bridge namespace is private anyway).
use std::{
    collections::HashMap,
    fs::File,
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
};

use nix::sys::signal::Signal;
use tandem::admin_client::get;

use crate::support::{bin, eventually, free_port, http, legacy_app, Tandem};

/// Small files so a few thousand lines rotate many times and the oldest get deleted.
const MAX_FILE_SIZE: u64 = 64 * 1024;
const MAX_FILES: u64 = 10;

/// Nomad's logmon, simulated: rotating `<task>.<stream>.N` files.
struct NomadLogger {
    dir: PathBuf,
    base: String,
    index: u64,
    file: File,
    written: u64,
    /// Highest index created so far (shared with the test).
    highest: Arc<Mutex<u64>>,
}

impl NomadLogger {
    fn new(dir: &Path, task: &str, stream: &str, highest: Arc<Mutex<u64>>) -> NomadLogger {
        let base = format!("{task}.{stream}");
        let file = File::create(dir.join(format!("{base}.0"))).unwrap();
        NomadLogger {
            dir: dir.to_path_buf(),
            base,
            index: 0,
            file,
            written: 0,
            highest,
        }
    }

    fn write(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.written == MAX_FILE_SIZE {
                self.rotate();
            }
            let room = (MAX_FILE_SIZE - self.written) as usize;
            let n = room.min(data.len());
            self.file.write_all(&data[..n]).unwrap();
            self.written += n as u64;
            data = &data[n..];
        }
    }

    fn rotate(&mut self) {
        self.index += 1;
        self.file = File::create(self.dir.join(format!("{}.{}", self.base, self.index))).unwrap();
        self.written = 0;
        *self.highest.lock().unwrap() = self.index;
        if self.index >= MAX_FILES {
            let old = self.index - MAX_FILES;
            let _ = std::fs::remove_file(self.dir.join(format!("{}.{old}", self.base)));
        }
    }

    /// Copy `from` into the rotating files until EOF, in a thread.
    fn pump(mut self, mut from: impl Read + Send + 'static) -> thread::JoinHandle<()> {
        thread::spawn(move || {
            let mut buf = vec![0; 16 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => self.write(&buf[..n]),
                }
            }
        })
    }
}

/// The app task (legacy-app), its output through the logger; killed by pid on drop.
struct AppTask {
    child: Child,
    pumps: Vec<thread::JoinHandle<()>>,
}

impl Drop for AppTask {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The `data` of the tandem task's template in the job spec, rendered with `env`.
fn render_sidecar_template(env: &HashMap<String, String>) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let spec = std::fs::read_to_string(root.join("nomad/sidecar.nomad.hcl")).unwrap();
    let task = &spec[spec.find("task \"tandem\"").expect("task tandem")..];
    let start = task.find("<<EOT\n").expect("template heredoc") + "<<EOT\n".len();
    let len = task[start..].find("\nEOT").expect("heredoc end");
    let mut data = task[start..start + len].to_string();
    while let Some(at) = data.find("{{") {
        let end = at + data[at..].find("}}").expect("closing }}") + 2;
        let expr = data[at + 2..end - 2].trim();
        let var = expr
            .strip_prefix("env ")
            .map(|v| v.trim().trim_matches('"'))
            .unwrap_or_else(|| panic!("template function the test cannot render: {expr}"));
        let value = env.get(var).unwrap_or_else(|| panic!("{var} not set"));
        data.replace_range(at..end, value);
    }
    data.replace("0.0.0.0:", "127.0.0.1:")
}

/// `i` of a `/flood` line (`TIMESTAMP INFO  flood line i of N`: plain text, so the whole
/// line is the record's msg).
pub fn flood_index(msg: &str, of: usize) -> Option<usize> {
    msg[msg.find("flood line ")?..]
        .strip_prefix("flood line ")?
        .strip_suffix(&format!(" of {of}"))?
        .parse()
        .ok()
}

#[test]
fn sidecar_job_tails_rotating_alloc_logs_once_each_and_proxies_the_app() {
    let tmp = tempfile::tempdir().unwrap();
    // Nomad's alloc dir: alloc/{logs,data,tmp} shared by the group, one dir per task.
    let alloc = tmp.path().join("alloc");
    let logs = alloc.join("logs");
    for d in [&logs, &alloc.join("data"), &alloc.join("tmp")] {
        std::fs::create_dir_all(d).unwrap();
    }
    let task_dir = tmp.path().join("tandem");
    std::fs::create_dir_all(task_dir.join("local")).unwrap();
    std::fs::create_dir_all(task_dir.join("secrets")).unwrap();
    // The admin token Nomad would render into secrets/ from a Nomad Variable.
    std::fs::write(
        task_dir.join("secrets/admin-token"),
        "nomad-sim-admin-token-0123456789\n",
    )
    .unwrap();

    let (http_port, admin_port, app_port) = (free_port(), free_port(), free_port());
    let alloc_id = "5d7e5a2c-9d3b-4f4e-8f0a-6c1b2a3d4e5f";
    let env: HashMap<String, String> = [
        ("NOMAD_ALLOC_ID", alloc_id),
        ("NOMAD_SHORT_ALLOC_ID", &alloc_id[..8]),
        ("NOMAD_ALLOC_NAME", "legacy-app-sidecar.web[0]"),
        ("NOMAD_ALLOC_INDEX", "0"),
        ("NOMAD_TASK_NAME", "tandem"),
        ("NOMAD_GROUP_NAME", "web"),
        ("NOMAD_JOB_ID", "legacy-app-sidecar"),
        ("NOMAD_JOB_NAME", "legacy-app-sidecar"),
        ("NOMAD_NAMESPACE", "default"),
        ("NOMAD_DC", "dc1"),
        ("NOMAD_REGION", "global"),
        ("NOMAD_ALLOC_DIR", alloc.to_str().unwrap()),
        ("NOMAD_TASK_DIR", task_dir.join("local").to_str().unwrap()),
        (
            "NOMAD_SECRETS_DIR",
            task_dir.join("secrets").to_str().unwrap(),
        ),
        ("NOMAD_PORT_http", &http_port.to_string()),
        ("NOMAD_PORT_admin", &admin_port.to_string()),
        ("NOMAD_META_app_port", &app_port.to_string()),
        ("NOMAD_META_APP_PORT", &app_port.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();

    // The template stanza's destination: local/tandem.toml in the task dir.
    let cfg = task_dir.join("local/tandem.toml");
    std::fs::write(&cfg, render_sidecar_template(&env)).unwrap();

    // Prestart sidecar: tandem starts first, with no command, the args from the job spec.
    let mut t = Tandem::spawn_cmd(
        Command::new(bin())
            .args(["--config", cfg.to_str().unwrap()])
            .current_dir(&task_dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(&env),
    );
    t.collect_stdout();
    t.wait_event("beside");
    let proxy = t.wait_event("proxy_listening")["addr"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(proxy, format!("127.0.0.1:{http_port}"));
    let admin = format!("127.0.0.1:{admin_port}");
    eventually("admin answers", || get(&admin, "/readyz").is_ok());
    assert_eq!(
        get(&admin, "/readyz").unwrap().0,
        503,
        "no app yet: not ready"
    );

    // A request that arrives before the app is up is held by the proxy, then served.
    let early = {
        let proxy = proxy.clone();
        thread::spawn(move || http(&proxy, "GET", "/", b"", &[]))
    };
    eventually("the early request is held by the proxy", || {
        let auth = [("Authorization", "Bearer nomad-sim-admin-token-0123456789")];
        http(&admin, "GET", "/metrics", b"", &auth).is_ok_and(|(_, _, m)| {
            String::from_utf8_lossy(&m)
                .lines()
                .any(|l| l.starts_with("tandem_proxy_requests_in_flight{") && l.ends_with(" 1"))
        })
    });

    // The main task: legacy-app, stdout and stderr through the rotating logger.
    let highest = Arc::new(Mutex::new(0));
    let mut child = Command::new(legacy_app())
        .args(["--host", "127.0.0.1", "--port", &app_port.to_string()])
        .envs(&env)
        .env("NOMAD_TASK_NAME", "app")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = NomadLogger::new(&logs, "app", "stdout", highest.clone());
    let err = NomadLogger::new(&logs, "app", "stderr", Arc::default());
    let pumps = vec![
        out.pump(child.stdout.take().unwrap()),
        err.pump(child.stderr.take().unwrap()),
    ];
    let mut app = AppTask { child, pumps };

    let (status, head, body) = early.join().unwrap().expect("held request");
    assert_eq!(status, 200, "{head}");
    assert!(String::from_utf8_lossy(&body).contains("hello from legacy-app"));
    eventually("ready once the app answers", || {
        get(&admin, "/readyz").is_ok_and(|(c, _)| c == 200)
    });

    // Floods through the proxy: each round's lines land across many rotated files.
    let rounds = [5000usize, 5001, 5002, 5003];
    let count = |of: usize| {
        t.records()
            .iter()
            .filter(|r| flood_index(r["msg"].as_str().unwrap_or(""), of).is_some())
            .count()
    };
    for of in rounds {
        let (status, head, _) =
            http(&proxy, "GET", &format!("/flood?lines={of}"), b"", &[]).unwrap();
        assert_eq!(status, 200, "{head}");
        // Like a real tail, tandem must keep up before logmon deletes what it has not read;
        // the window here is MAX_FILES x 64 KiB, each round about 300 KB.
        eventually(&format!("the {of} lines of round {of} are records"), || {
            count(of) >= of
        });
    }
    let top = *highest.lock().unwrap();
    assert!(top >= MAX_FILES + 2, "rotated to .{top}");
    assert!(
        !logs.join("app.stdout.0").exists(),
        "logmon deleted the oldest files past max_files"
    );

    // Nomad stops the main task first, then the sidecar: tandem gets the app's last lines.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(app.child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(app.child.wait().unwrap().code(), Some(0));
    for p in app.pumps.drain(..) {
        p.join().unwrap();
    }
    eventually("the app's last line is a record", || {
        t.records().iter().any(|r| r["msg"] == "shutdown complete")
    });
    t.signal(Signal::SIGTERM);
    assert_eq!(t.wait_code(), 0, "a sidecar told to stop exits 0");

    // Every line exactly once, structured, with Nomad's identity on it.
    let records = t.records();
    for of in rounds {
        let mut seen = vec![0u32; of];
        for r in &records {
            if let Some(i) = flood_index(r["msg"].as_str().unwrap_or(""), of) {
                seen[i] += 1;
                assert_eq!(r["stream"], "stdout");
                assert_eq!(r["level"], "INFO");
            }
        }
        let bad: Vec<_> = seen.iter().enumerate().filter(|(_, c)| **c != 1).collect();
        assert!(
            bad.is_empty(),
            "round {of}: lines not seen exactly once: {bad:?}"
        );
    }
    let listening = records
        .iter()
        .find(|r| r["msg"] == "listening")
        .expect("the app's JSON startup line");
    assert_eq!(listening["fields"]["port"], app_port);
    for r in &records {
        let res = &r["resource"];
        assert_eq!(res["nomad.alloc_id"], alloc_id, "{r}");
        assert_eq!(res["nomad.task_name"], "tandem");
        assert_eq!(res["nomad.group_name"], "web");
        assert_eq!(res["nomad.job_name"], "legacy-app-sidecar");
        assert_eq!(res["nomad.namespace"], "default");
        assert_eq!(res["nomad.dc"], "dc1");
        assert!(res.get("nomad.token").is_none());
        if r["fields"]["kind"] == "access" {
            continue; // the proxy's access log, from tandem itself
        }
        let path = res["log.file.path"].as_str().unwrap_or("");
        assert!(
            path.starts_with(logs.join("app.std").to_str().unwrap()),
            "{r}"
        );
    }
    // The proxy's access log is in the same stream: one record per flood request.
    let floods = records
        .iter()
        .filter(|r| r["fields"]["kind"] == "access" && r["fields"]["path"] == "/flood")
        .count();
    assert_eq!(floods, rounds.len());
    // The checkpoint lives in alloc/data, so a restarted tandem task resumes where it was.
    assert!(alloc.join("data/tandem-tail.json").exists());
}
