//! `tandem status` for people: `/status` as a compact table, like `supervisorctl status`.
//!
//! Rendered from the JSON (not from tandem's types), so it works against an older or newer
//! tandem: a field it does not find shows as `-`. Colour only when asked (`main` asks on a
//! terminal without `NO_COLOR`); without it the output is plain text, no escape sequences.
//! A leaf: it imports nothing of tandem's.

use serde_json::Value;

const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const RED: &str = "\x1b[31m";
const RESET: &str = "\x1b[0m";

/// One cell: its text and, with colour on, its colour.
struct Cell {
    text: String,
    colour: Option<&'static str>,
}

/// The table for `status` (the `/status` JSON), with ANSI colours when `colour`.
pub fn render(status: &Value, colour: bool) -> String {
    let s = |k: &str| status.get(k);
    let phase = s("phase").and_then(Value::as_str).unwrap_or("-");
    let ready = s("ready").and_then(Value::as_bool);
    let phase_colour = match (phase, ready) {
        ("running", Some(true)) => GREEN,
        ("running", _) | ("starting", _) | ("restarting", _) => YELLOW,
        _ => RED,
    };
    let head = [
        "SERVICE",
        "PHASE",
        "READY",
        "PID",
        "UPTIME",
        "RESTARTS",
        "LAST EXIT",
    ];
    let row = vec![
        plain(str_or_dash(s("service"))),
        Cell {
            text: phase.to_string(),
            colour: Some(phase_colour),
        },
        match ready {
            Some(true) => coloured("yes", GREEN),
            Some(false) => coloured("no", YELLOW),
            None => plain("-".into()),
        },
        plain(num_or_dash(s("app_pid"))),
        // The app's uptime (`-` while it is not running), as supervisorctl shows the
        // program's; tandem's when an older tandem does not say.
        plain(
            s("app_uptime_seconds")
                .or(s("uptime_seconds"))
                .and_then(Value::as_u64)
                .map_or_else(|| "-".into(), uptime),
        ),
        plain(num_or_dash(s("restarts"))),
        plain(num_or_dash(s("last_exit_code"))),
    ];
    let mut out = table(&head, &[row], colour);
    let listeners = s("listeners")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !listeners.is_empty() {
        let window = s("stats_window_seconds")
            .and_then(Value::as_u64)
            .map_or_else(String::new, |w| format!(" ({w}s)"));
        let head = [
            "LISTENER".to_string(),
            "ADDRESS".into(),
            "REQUESTS".into(),
            "5XX".into(),
            "TANDEM ERRORS".into(),
            format!("REQ/S{window}"),
            format!("ERR%{window}"),
            "P50".into(),
            "P99".into(),
            "MEAN".into(),
        ];
        let rows: Vec<Vec<Cell>> = listeners.iter().map(listener_row).collect();
        let head: Vec<&str> = head.iter().map(String::as_str).collect();
        out.push('\n');
        out.push_str(&table(&head, &rows, colour));
    }
    out
}

fn listener_row(l: &Value) -> Vec<Cell> {
    let st = l.get("stats");
    let stat = |k: &str| st.and_then(|s| s.get(k));
    let count_bad = |k: &str| {
        let v = stat(k).and_then(Value::as_u64);
        Cell {
            text: v.map_or_else(|| "-".into(), |v| v.to_string()),
            colour: match v {
                Some(0) => None,
                Some(_) => Some(RED),
                None => None,
            },
        }
    };
    let latency = |k: &str| {
        plain(
            stat("latency_ms")
                .and_then(|l| l.get(k))
                .and_then(Value::as_f64)
                .map_or_else(|| "-".into(), ms),
        )
    };
    let error_rate = stat("error_rate").and_then(Value::as_f64);
    vec![
        plain(str_or_dash(l.get("name"))),
        plain(str_or_dash(l.get("addr"))),
        plain(num_or_dash(stat("requests"))),
        count_bad("responses_5xx"),
        count_bad("tandem_errors"),
        plain(
            stat("rate_per_second")
                .and_then(Value::as_f64)
                .map_or_else(|| "-".into(), |r| format!("{r:.1}")),
        ),
        Cell {
            text: error_rate.map_or_else(|| "-".into(), |r| format!("{:.1}%", r * 100.0)),
            colour: error_rate.map(|r| {
                if r <= 0.0 {
                    GREEN
                } else if r < 0.05 {
                    YELLOW
                } else {
                    RED
                }
            }),
        },
        latency("p50"),
        latency("p99"),
        latency("mean"),
    ]
}

/// Columns padded to their widest cell (measured without colour), two spaces apart.
fn table(head: &[&str], rows: &[Vec<Cell>], colour: bool) -> String {
    let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.text.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<(&str, Option<&str>)>| {
        let n = cells.len();
        for (i, ((text, c), w)) in cells.into_iter().zip(&widths).enumerate() {
            let pad = if i + 1 == n {
                String::new()
            } else {
                " ".repeat(w - text.chars().count() + 2)
            };
            match c.filter(|_| colour) {
                Some(c) => out.push_str(&format!("{c}{text}{RESET}{pad}")),
                None => out.push_str(&format!("{text}{pad}")),
            }
        }
        out.push('\n');
    };
    line(&mut out, head.iter().map(|h| (*h, None)).collect());
    for row in rows {
        line(
            &mut out,
            row.iter().map(|c| (c.text.as_str(), c.colour)).collect(),
        );
    }
    out
}

fn plain(text: String) -> Cell {
    Cell { text, colour: None }
}

fn coloured(text: &str, colour: &'static str) -> Cell {
    Cell {
        text: text.to_string(),
        colour: Some(colour),
    }
}

/// A string from the answer, control characters shown as `?`: a table on a terminal must
/// not carry escape sequences it did not choose.
fn str_or_dash(v: Option<&Value>) -> String {
    v.and_then(Value::as_str)
        .unwrap_or("-")
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn num_or_dash(v: Option<&Value>) -> String {
    match v {
        Some(Value::Number(n)) => n.to_string(),
        _ => "-".into(),
    }
}

/// `3d 4:05:06`, `4:05:06`: as supervisorctl shows uptime.
fn uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}:{m:02}:{s:02}")
    } else {
        format!("{h}:{m:02}:{s:02}")
    }
}

fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}ms")
    } else {
        format!("{v:.0}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> Value {
        serde_json::json!({
            "service": "billing", "phase": "running", "ready": true, "app_pid": 4242,
            "restarts": 1, "last_exit_code": null, "uptime_seconds": 9999,
            "app_uptime_seconds": 3725,
            "stats_window_seconds": 10,
            "listeners": [
                {"name": "web", "addr": "127.0.0.1:8080", "stats": {
                    "requests": 120, "responses_5xx": 3, "tandem_errors": 0,
                    "window_seconds": 10.0, "rate_per_second": 2.5, "error_rate": 0.1,
                    "latency_ms": {"p50": 1.25, "p99": 48.0, "mean": 3.5}}},
                {"name": "admin", "addr": "127.0.0.1:9000"}
            ]
        })
    }

    #[test]
    fn plain_table_has_no_escapes() {
        let out = render(&status(), false);
        assert!(!out.contains('\x1b'), "{out}");
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[0].starts_with("SERVICE  PHASE    READY  PID"),
            "{out}"
        );
        assert!(
            lines[1].starts_with("billing  running  yes    4242  1:02:05  1"),
            "{out}"
        );
        assert!(lines[1].trim_end().ends_with('-'), "{out}");
        assert_eq!(lines[2], "");
        assert!(lines[3].starts_with("LISTENER  ADDRESS"), "{out}");
        assert!(lines[3].contains("REQ/S (10s)"), "{out}");
        let web: Vec<&str> = lines[4].split_whitespace().collect();
        assert_eq!(
            web,
            [
                "web",
                "127.0.0.1:8080",
                "120",
                "3",
                "0",
                "2.5",
                "10.0%",
                "1.25ms",
                "48ms",
                "3.50ms"
            ]
        );
        // A listener without stats (an older tandem): dashes.
        assert!(lines[5].starts_with("admin "), "{out}");
        assert_eq!(lines[5].split_whitespace().filter(|c| *c == "-").count(), 8);
        // Columns line up.
        assert_eq!(lines[3].find("ADDRESS"), lines[4].find("127.0.0.1"));
    }

    #[test]
    fn colour_by_state() {
        let out = render(&status(), true);
        assert!(out.contains(&format!("{GREEN}running{RESET}")), "{out:?}");
        assert!(out.contains(&format!("{GREEN}yes{RESET}")), "{out:?}");
        assert!(out.contains(&format!("{RED}3{RESET}")), "{out:?}");
        assert!(out.contains(&format!("{RED}10.0%{RESET}")), "{out:?}");
        // Padding outside the escapes: the plain text is the same table.
        let stripped = out
            .replace(GREEN, "")
            .replace(YELLOW, "")
            .replace(RED, "")
            .replace(RESET, "");
        assert_eq!(stripped, render(&status(), false));

        let mut s = status();
        s["phase"] = "restarting".into();
        s["ready"] = false.into();
        let out = render(&s, true);
        assert!(
            out.contains(&format!("{YELLOW}restarting{RESET}")),
            "{out:?}"
        );
        assert!(out.contains(&format!("{YELLOW}no{RESET}")), "{out:?}");
        s["phase"] = "stopping".into();
        assert!(render(&s, true).contains(&format!("{RED}stopping{RESET}")));
    }

    #[test]
    fn missing_fields_show_as_dashes() {
        let out = render(&serde_json::json!({"phase": "starting"}), false);
        assert_eq!(out.lines().count(), 2, "{out}");
        assert!(
            out.lines().nth(1).unwrap().starts_with("-        starting"),
            "{out}"
        );
        assert_eq!(uptime(3 * 86_400 + 5), "3d 0:00:05");
        let out = render(&serde_json::json!({"service": "a\u{1b}[2Jb"}), false);
        assert!(out.contains("a?[2Jb") && !out.contains('\x1b'), "{out:?}");
    }
}
