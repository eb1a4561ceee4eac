//! Apps nobody here wrote, started as their users start them, for the fault matrix: Python's
//! `http.server`, Debian's nginx (HTTP/1.1, or h2c with prior knowledge) and redis-server.
//! Each returns the app's command line, or `None` when the program is not installed (a
//! failure, or a skip under TANDEM_TEST_ALLOW_SKIP: `support::can_run`).
use std::{path::Path, process::Command};

use crate::support::{bin, require_tool, Tandem};

/// Python's own `http.server` (a directory listing of `dir`), as a user would start it.
pub fn python_http_server(dir: &Path, port: u16) -> Option<Vec<String>> {
    require_tool("python3").then(|| {
        [
            "python3",
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
            &dir.display().to_string(),
        ]
        .map(String::from)
        .to_vec()
    })
}

/// nginx in the foreground (one process, no daemon, no master), serving `dir` and answering
/// `/ok` with "ok"; `h2` makes the port speak HTTP/2 with prior knowledge (h2c) instead of
/// HTTP/1.1. Its access log is `dir/access.log`, one line per request it served.
pub fn nginx(dir: &Path, port: u16, h2: bool) -> Option<Vec<String>> {
    if !require_tool("nginx") {
        return None;
    }
    let d = dir.display();
    let http2 = if h2 { " http2" } else { "" };
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            r#"
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log stderr notice;
events {{ worker_connections 4096; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{port}{http2};
    root {d};
    location = /ok {{ return 200 "ok\n"; }}
  }}
}}
"#
        ),
    )
    .unwrap();
    Some(
        [
            "nginx",
            "-e",
            "stderr",
            "-p",
            &d.to_string(),
            "-c",
            &conf.display().to_string(),
        ]
        .map(String::from)
        .to_vec(),
    )
}

/// Requests nginx has served so far (lines of its access log in `dir`).
pub fn nginx_served(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("access.log"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// redis-server in the foreground on `port`, no persistence.
pub fn redis(dir: &Path, port: u16) -> Option<Vec<String>> {
    require_tool("redis-server").then(|| {
        [
            "redis-server",
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir.display().to_string(),
        ]
        .map(String::from)
        .to_vec()
    })
}

/// The shared set-up of the edge tests: tandem (admin on a free loopback port, restarted
/// always) with `extra` TOML (its `[[proxy.listeners]]`) in front of Python's `http.server`
/// serving `site` on `app`; under `prlimit --nofile=N:N` when `nofile` is given. Returns it
/// (stdout collected) and its admin address, once the app is ready; the config is written
/// to `dir`.
pub fn http_server_behind_tandem(
    dir: &Path,
    site: &Path,
    app: u16,
    extra: &str,
    nofile: Option<u32>,
) -> (Tandem, String) {
    let command: Vec<String> = python_http_server(site, app)
        .expect("python3 runs the app")
        .into_iter()
        .map(|a| format!("{a:?}"))
        .collect();
    let cfg = dir.join("tandem.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[app]
command = [{command}]
stop_timeout = "2s"
[admin]
listen = "127.0.0.1:0"
[restart]
policy = "always"
initial_delay = "50ms"
{extra}
"#,
            command = command.join(", ")
        ),
    )
    .unwrap();
    let mut cmd = match nofile {
        Some(n) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={n}:{n}")).arg("--").arg(bin());
            c
        }
        None => Command::new(bin()),
    };
    cmd.arg("--config").arg(&cfg);
    let mut t = Tandem::spawn_cmd(&mut cmd);
    t.collect_stdout();
    let admin = t.admin_addr();
    t.wait_event("ready");
    (t, admin)
}
