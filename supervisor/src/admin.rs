//! The admin port: `/healthz`, `/readyz`, `/metrics`, `/status`, a status page, and
//! `POST /admin/reload` and `POST /admin/restart`.
//!
//! Bound before the app starts (like every listener) and served until tandem exits, so an
//! orchestrator sees "not ready" during start, restart and stop rather than a refused
//! connection. The GET endpoints observe the lifecycle's status watch and the metrics
//! registry; the actions (`POST /admin/reload`, `/admin/restart`) are asked of the lifecycle
//! through [`crate::control`], which alone acts. Loopback by default (see `AdminConfig`); on
//! any other address a bearer token from `admin.token_file` is required, checked before any
//! handler runs: `/status` and the page carry the app's last log records, so they are never
//! served without it; an action is refused (403) off loopback without a token.
//! `/status` and the page show per-listener request stats ([`ListenerStats`]: the accept loop
//! offers it a sample every [`listener_stats::TICK`], which reads the registry only when a
//! sample is due: every second while someone looks, every 10 s otherwise) and the app's last
//! records ([`Recent`], fed after redaction). `POST /admin/upgrade` execs tandem in place
//! (see `lifecycle::upgrade`): [`serve_until`] gives the listening socket back for it.
use std::{collections::BTreeMap, convert::Infallible, net::SocketAddr, sync::Arc, time::Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming, header, server::conn::http1, service::service_fn, Method, Request, Response,
    StatusCode,
};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, sync::watch};
use tokio_util::sync::CancellationToken;

use crate::control;
use crate::listener_stats::{self, ListenerStats, Stats};
use crate::logs::Recent;
use crate::phase::{Phase, Status};

/// What the admin handlers read.
pub struct AdminState {
    pub service: String,
    pub status: watch::Receiver<Status>,
    pub registry: Arc<Registry>,
    pub started: Instant,
    /// Per-listener request stats, read from `registry`.
    pub stats: ListenerStats,
    /// The app's last log records, redacted; None: no log pipeline.
    pub recent: Option<Arc<Recent>>,
    /// Where actions go; None: this port takes none.
    pub control: Option<control::Handle>,
    /// The outbound services and their endpoints; None: none configured.
    pub outbound: Option<tandem_proxy::OutboundView>,
}

/// How long an action may take before the admin port answers 504 (its result still lands on
/// `/status`).
const ACTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether `req` carries the admin token (digests compared: the time taken tells neither
/// where a guess differs nor how long the token is): as a bearer token (scripts, `tandem`), or
/// as the password of HTTP Basic, any user name (a browser on the status page asks for it).
fn authorized(req: &Request<Incoming>, token: Option<&str>) -> bool {
    let Some(token) = token else {
        return true;
    };
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let presented = if let Some(bearer) = value.strip_prefix("Bearer ") {
        bearer.as_bytes().to_vec()
    } else if let Some(basic) = value.strip_prefix("Basic ") {
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic.trim())
            .unwrap_or_default();
        match decoded.iter().position(|b| *b == b':') {
            Some(i) => decoded[i + 1..].to_vec(),
            None => Vec::new(),
        }
    } else {
        Vec::new()
    };
    tandem_proxy::secrets_equal(&presented, token.as_bytes())
}

/// Whether a browser sent `req` from another site: its `Origin` names another host than the
/// one it was sent to. An action from there is refused, so a web page cannot make a visitor's
/// browser restart the app (the admin port may take actions without a token on loopback, and a
/// browser sends cached Basic credentials with a form posted from anywhere). Clients that are
/// not browsers send no `Origin`.
fn cross_site(req: &Request<Incoming>) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return false;
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest.trim_end_matches('/'));
    origin_host.is_none() || origin_host != host
}

/// Serve the admin endpoints on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    serve_with_token(listener, state, None).await;
}

/// [`serve`], requiring `Authorization: Bearer <token>` on every request when `token` is
/// set (from [`crate::config::Admin::token`], read when the config was checked); without it, 401.
pub async fn serve_with_token(
    listener: TcpListener,
    state: Arc<AdminState>,
    token: Option<Arc<str>>,
) {
    serve_until(listener, state, token, CancellationToken::new()).await;
}

/// How long a stopped admin port waits for its open connections (the answer to
/// `POST /admin/upgrade` among them) before it gives its socket back.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// [`serve_with_token`] until `stop` is cancelled: then it stops accepting (new connections
/// wait in the backlog), lets open connections finish (at most [`STOP_GRACE`]) and returns the
/// listening socket, for a new image of tandem to serve (`tandem upgrade`).
pub async fn serve_until(
    listener: TcpListener,
    state: Arc<AdminState>,
    token: Option<Arc<str>>,
    stop: CancellationToken,
) -> TcpListener {
    let connections = tokio_util::task::TaskTracker::new();
    let mut tick = tokio::time::interval(listener_stats::TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Actions without a token only on loopback (the config requires a token elsewhere; this
    // is the second lock).
    let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => {
                connections.close();
                let _ = tokio::time::timeout(STOP_GRACE, connections.wait()).await;
                return listener;
            }
            a = listener.accept() => a,
            _ = tick.tick() => {
                // Only listeners have stats: without them, no registry read per tick.
                if !state.status.borrow().listeners.is_empty() {
                    state.stats.sample();
                }
                continue;
            }
        };
        let (stream, _peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // EMFILE and friends: back off a little rather than spin.
                tracing::warn!(event = "admin_accept_failed", error = %e, "admin port cannot accept");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        let token = token.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                // Probes (Nomad and Docker checks, load balancers) cannot carry a secret, and
                // "ready or not" tells nothing worth one: only those two skip the token.
                let probe = matches!(req.uri().path(), "/healthz" | "/readyz");
                let ok = probe || authorized(&req, token.as_deref());
                let may_act = token.is_some() || loopback;
                async move {
                    if !ok {
                        let mut r = text(StatusCode::UNAUTHORIZED, "admin token required\n");
                        r.headers_mut().insert(
                            header::WWW_AUTHENTICATE,
                            header::HeaderValue::from_static("Bearer realm=\"tandem-admin\""),
                        );
                        // A browser asks its user (any name, the token as password).
                        r.headers_mut().append(
                            header::WWW_AUTHENTICATE,
                            header::HeaderValue::from_static(
                                "Basic realm=\"tandem-admin\", charset=\"UTF-8\"",
                            ),
                        );
                        return Ok::<_, Infallible>(r);
                    }
                    if req.method() == Method::POST && req.uri().path().starts_with("/admin/") {
                        if cross_site(&req) {
                            return Ok::<_, Infallible>(text(
                                StatusCode::FORBIDDEN,
                                "admin actions are refused from another site's page\n",
                            ));
                        }
                        return Ok::<_, Infallible>(act(&req, &state, may_act).await);
                    }
                    Ok::<_, Infallible>(handle(&req, &state))
                }
            });
            let conn = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service);
            let _ = conn.await;
        });
    }
}

/// The address the admin listener actually bound (port 0 resolves here).
pub fn local_addr(listener: &TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}

fn handle(req: &Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    let status = state.status.borrow().clone();
    match req.uri().path() {
        // tandem itself answers: its loop is alive. The app's health is /readyz.
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if status.ready {
                text(StatusCode::OK, "ready\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("not ready: {}\n", status.phase.as_str()),
                )
            }
        }
        "/metrics" => {
            let mut body = String::new();
            if prometheus_client::encoding::text::encode(&mut body, &state.registry).is_err() {
                return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n");
            }
            respond(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body,
            )
        }
        "/status" => respond(
            StatusCode::OK,
            "application/json",
            status_json(state, &status).to_string(),
        ),
        "/" => respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            status_page(state, &status),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz /readyz /metrics /status\n",
        ),
    }
}

/// `POST /admin/reload` and `/admin/restart`: ask the lifecycle, answer with its result: 200
/// done, 422 reload refused (the old config stays), 409 no restart (no app running), 403 not
/// allowed here, 504 no answer in time.
async fn act(req: &Request<Incoming>, state: &AdminState, allowed: bool) -> Response<Full<Bytes>> {
    let action = match req.uri().path() {
        "/admin/reload" => control::Action::Reload,
        "/admin/restart" => control::Action::Restart,
        "/admin/upgrade" => control::Action::Upgrade {
            binary: query_param(req, "binary"),
        },
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                "not found: try POST /admin/reload, /admin/restart or /admin/upgrade\n",
            )
        }
    };
    if !allowed {
        return text(
            StatusCode::FORBIDDEN,
            "admin actions need admin.token_file when the admin port is not on loopback\n",
        );
    }
    let Some(control) = &state.control else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "no lifecycle to act\n");
    };
    match control.ask(action.clone(), ACTION_TIMEOUT).await {
        Some(outcome) => {
            let code = match (outcome.ok(), action) {
                (true, _) => StatusCode::OK,
                (false, control::Action::Reload | control::Action::Upgrade { .. }) => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                (false, control::Action::Restart) => StatusCode::CONFLICT,
            };
            let body = serde_json::to_string(&outcome).unwrap_or_default();
            respond(code, "application/json", body)
        }
        None => text(
            StatusCode::GATEWAY_TIMEOUT,
            "no answer from the lifecycle in time; see /status for the result\n",
        ),
    }
}

/// The value of `name` in the request's query string, percent-decoded (`+` is a space).
fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// `/status`: the fields scripts read (kept as they were), then the listeners' stats and the
/// app's last records.
fn status_json(state: &AdminState, s: &Status) -> serde_json::Value {
    let stats = state.stats.report();
    let listeners = s
        .listeners
        .iter()
        .map(|(name, addr)| {
            let mut l = serde_json::json!({"name": name, "addr": addr});
            if let Some(st) = stats.get(name) {
                l["stats"] = serde_json::to_value(st).unwrap_or_default();
            }
            l
        })
        .collect::<Vec<_>>();
    let logs = state
        .recent
        .as_ref()
        .map(|r| r.snapshot())
        .unwrap_or_default();
    serde_json::json!({
        "service": state.service,
        "version": env!("CARGO_PKG_VERSION"),
        "phase": s.phase,
        "ready": s.ready,
        "app_pid": s.app_pid,
        "restarts": s.restarts,
        "last_exit_code": s.last_exit_code,
        "uptime_seconds": state.started.elapsed().as_secs(),
        "app_uptime_seconds": s.app_since.map(|t| t.elapsed().as_secs()),
        "upgrade": s.upgrade,
        "listeners": listeners,
        "outbound": state.outbound.as_ref().map(|o| o.snapshot()).unwrap_or_default(),
        "stats_window_seconds": listener_stats::WINDOW.as_secs(),
        "recent_logs": logs,
        "reload": s.reload,
    })
}

fn status_page(state: &AdminState, s: &Status) -> String {
    let colour = match (s.phase, s.ready) {
        (Phase::Running, true) => "#2e7d32",
        (Phase::Running, false) | (Phase::Starting, _) | (Phase::Restarting, _) => "#ef6c00",
        _ => "#c62828",
    };
    let opt = |v: Option<i32>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    let stats = state.stats.report();
    let listeners = listener_rows(&s.listeners, &stats);
    let outbound = state
        .outbound
        .as_ref()
        .map(|o| outbound_rows(&o.snapshot()))
        .unwrap_or_default();
    let logs = state
        .recent
        .as_ref()
        .map(|r| log_lines(&r.snapshot()))
        .unwrap_or_default();
    format!(
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=2>\
         <title>tandem: {service}</title><style>body{{font:14px system-ui,sans-serif;margin:2em}}\
         td,th{{padding:.2em 1em .2em 0;text-align:left}}.phase{{color:#fff;background:{colour};padding:.2em .6em;border-radius:4px}}\
         .bad{{color:#c62828}}pre{{background:#f5f5f5;padding:.6em;overflow-x:auto;font-size:12px}}</style></head>\
         <body><h1>{service}</h1><p><span class=phase>{phase}{ready}</span></p><table>\
         <tr><td>app pid</td><td>{pid}</td></tr><tr><td>app uptime</td><td>{app_uptime}</td></tr><tr><td>restarts</td><td id=restarts>{restarts}</td></tr>\
         <tr><td>last exit code</td><td>{last}</td></tr><tr><td>tandem uptime</td><td>{uptime}s</td></tr>\
         <tr><td>version</td><td>{version}</td></tr><tr><td>last reload</td><td>{reload}</td></tr><tr><td>last upgrade</td><td>{upgrade}</td></tr></table>\
         <p><button id=restart onclick=restartApp()>Restart the app</button> <span id=action></span></p>\
         <script>function restartApp(){{var a=document.getElementById('action');a.textContent='restarting...';\
         fetch(location.origin+'/admin/restart',{{method:'POST',credentials:'same-origin'}}).then(function(r){{return r.text().then(function(t){{\
         a.textContent=(r.ok?'restarted: ':'refused ('+r.status+'): ')+t;}})}}).catch(function(e){{a.textContent='failed: '+e}})}}</script>\
         {listeners}{outbound}<h2>Last log records</h2>{logs}\
         <p><a href=/metrics>/metrics</a> · <a href=/status>/status</a> · <a href=/readyz>/readyz</a></p></body></html>",
        service = esc(&state.service),
        phase = s.phase.as_str(),
        ready = if s.ready { " · ready" } else { "" },
        pid = opt(s.app_pid),
        app_uptime = s
            .app_since
            .map_or_else(|| "-".into(), |t| format!("{}s", t.elapsed().as_secs())),
        restarts = s.restarts,
        last = opt(s.last_exit_code),
        uptime = state.started.elapsed().as_secs(),
        version = env!("CARGO_PKG_VERSION"),
        reload = reload_cell(s.reload.as_ref()),
        upgrade = upgrade_cell(s.upgrade.as_ref()),
    )
}

/// The last `tandem upgrade` on the page: when, from which version to which binary, or why
/// the old binary took over again.
fn upgrade_cell(u: Option<&crate::phase::UpgradeOutcome>) -> String {
    let Some(u) = u else {
        return "-".into();
    };
    match &u.error {
        Some(e) => format!(
            "{} (generation {}): <span class=bad>the old binary took over again: {}</span>",
            esc(&u.at),
            u.generation,
            esc(e)
        ),
        None => format!(
            "{} (generation {}): {} → {} ({})",
            esc(&u.at),
            u.generation,
            esc(&u.from_version),
            esc(&u.version),
            esc(&u.binary)
        ),
    }
}

/// The last reload on the page: when, by what, and what it did or why it was refused.
fn reload_cell(r: Option<&crate::phase::ReloadOutcome>) -> String {
    let Some(r) = r else {
        return "-".into();
    };
    let list = |keys: &[String]| {
        if keys.is_empty() {
            "nothing".to_string()
        } else {
            esc(&keys.join(", "))
        }
    };
    match &r.error {
        Some(e) => format!(
            "{} ({}): <span class=bad>refused, the old config stays: {}</span>",
            esc(&r.at),
            r.trigger,
            esc(e)
        ),
        None => format!(
            "{} ({}): applied {}; pending restart: {}",
            esc(&r.at),
            r.trigger,
            list(&r.applied),
            list(&r.pending_restart)
        ),
    }
}

/// HTML text: nothing the app or a config wrote can open a tag or an attribute.
fn esc(v: &str) -> String {
    v.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The listeners' table: totals since start, rate, error rate and latency over the window.
/// The outbound services and their endpoints (ejected ones marked).
fn outbound_rows(services: &[tandem_proxy::OutboundStatus]) -> String {
    if services.is_empty() {
        return String::new();
    }
    let mut rows = String::from(
        "<h2>Outbound services</h2><table><tr><th>service</th><th>address</th><th>endpoints</th></tr>",
    );
    for svc in services {
        let endpoints = if svc.endpoints.is_empty() {
            "<span class=bad>none</span>".to_string()
        } else {
            svc.endpoints
                .iter()
                .map(|e| {
                    let in_flight = if e.in_flight > 0 {
                        format!(" ({} in flight)", e.in_flight)
                    } else {
                        String::new()
                    };
                    if e.ejected {
                        format!("<span class=bad>{} ejected</span>{in_flight}", esc(&e.addr))
                    } else {
                        format!("{}{in_flight}", esc(&e.addr))
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{endpoints}</td></tr>",
            esc(&svc.name),
            esc(&svc.listen)
        ));
    }
    rows.push_str("</table>");
    rows
}

fn listener_rows(listeners: &[(String, String)], stats: &BTreeMap<String, Stats>) -> String {
    if listeners.is_empty() {
        return String::new();
    }
    let mut rows = format!(
        "<h2>Proxy listeners</h2><table><tr><th>listener</th><th>address</th><th>requests</th>\
         <th>5xx</th><th>tandem errors</th><th>req/s ({w}s)</th><th>error rate ({w}s)</th>\
         <th>p50 ({w}s)</th><th>p99 ({w}s)</th><th>mean ({w}s)</th></tr>",
        w = listener_stats::WINDOW.as_secs()
    );
    for (name, addr) in listeners {
        let st = stats.get(name);
        let n = |f: fn(&Stats) -> u64| st.map_or_else(|| "-".into(), |s| f(s).to_string());
        let bad = |v: u64| if v > 0 { " class=bad" } else { "" };
        let ms = |f: fn(&listener_stats::Latency) -> f64| {
            st.and_then(|s| s.latency_ms.as_ref())
                .map_or_else(|| "-".into(), |l| format!("{} ms", f(l)))
        };
        rows.push_str(&format!(
            "<tr><td>{name}</td><td>{addr}</td><td>{req}</td><td{b5}>{r5}</td><td{bt}>{te}</td>\
             <td>{rate}</td><td>{er}</td><td>{p50}</td><td>{p99}</td><td>{mean}</td></tr>",
            name = esc(name),
            addr = esc(addr),
            req = n(|s| s.requests),
            b5 = bad(st.map_or(0, |s| s.responses_5xx)),
            r5 = n(|s| s.responses_5xx),
            bt = bad(st.map_or(0, |s| s.tandem_errors)),
            te = n(|s| s.tandem_errors),
            rate = st.map_or_else(|| "-".into(), |s| s.rate_per_second.to_string()),
            er = st
                .and_then(|s| s.error_rate)
                .map_or_else(|| "-".into(), |r| format!("{:.1}%", r * 100.0)),
            p50 = ms(|l| l.p50),
            p99 = ms(|l| l.p99),
            mean = ms(|l| l.mean),
        ));
    }
    rows.push_str("</table>");
    rows
}

/// The app's last records, one line each: time, level, message and fields (redacted already).
fn log_lines(records: &[serde_json::Value]) -> String {
    if records.is_empty() {
        return "<p>none yet</p>".into();
    }
    let mut out = String::from("<pre>");
    for r in records {
        let field = |k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or("");
        out.push_str(&esc(&format!(
            "{} {:5} {}",
            field("time"),
            field("level"),
            field("msg")
        )));
        if let Some(f) = r.get("fields") {
            out.push(' ');
            out.push_str(&esc(&f.to_string()));
        }
        out.push('\n');
    }
    out.push_str("</pre>");
    out
}

fn text(code: StatusCode, body: &str) -> Response<Full<Bytes>> {
    respond(code, "text/plain; charset=utf-8", body.to_string())
}

fn respond(code: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = code;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}
