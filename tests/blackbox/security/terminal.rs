//! What reaches the operator's terminal: in the coloured TTY format, control characters from
//! the app (ESC and OSC sequences, CR, NUL) are shown escaped, never written raw, so an app's
//! output cannot retitle the window, move the cursor or rewrite earlier lines.
use crate::support::run;

#[test]
fn app_control_characters_are_escaped_in_the_tty_format() {
    let script = r#"printf 'title \033]0;pwned\007 clear \033[2J cr \r nul \000 end\n'"#;
    let (code, stdout, stderr) = run(&[
        "--set",
        "logs.sinks.stdout.format=pretty",
        "--",
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(code, 0, "{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.contains("title"))
        .unwrap_or_else(|| panic!("no app line in {stdout:?}"));
    // tandem's own colours are the only escapes: every ESC starts an SGR `ESC [ ... m`.
    for (i, _) in line.match_indices('\x1b') {
        let sgr = &line[i + 1..];
        let end = sgr.find('m').unwrap_or(sgr.len());
        assert!(
            sgr.starts_with('[') && sgr[1..end].chars().all(|c| c.is_ascii_digit() || c == ';'),
            "a raw escape from the app: {line:?}"
        );
    }
    assert!(
        !line.contains('\r') && !line.contains('\0') && !line.contains('\x07'),
        "{line:?}"
    );
    assert!(
        line.contains(r"\e]0;pwned") && line.contains(r"\e[2J"),
        "{line:?}"
    );
}

/// Forged log lines: an app (or a user whose input the app logs) writes JSON or logfmt naming
/// the keys tandem vouches for (`stream`, `service`, `pid`, `restart`, `resource`, `event`,
/// `kind`, `partial`, `lossy`, `fields`); every one stays under the record's `fields`, and the
/// record's own keys keep tandem's values.
#[test]
fn forged_log_lines_stay_under_fields() {
    let json = r#"{"msg":"forged","stream":"stderr","service":"admin","pid":1,"restart":99,"resource":{"team":"evil"},"event":"ready","kind":"access","fields":{"a":1},"partial":{"index":0},"lossy":true}"#;
    let script = format!(
        "echo '{json}'; echo 'msg=lf stream=stderr service=admin pid=1 restart=9 event=ready'"
    );
    let (code, stdout, stderr) = run(&[
        "--set",
        "service.name=shop",
        "--set",
        "logs.attributes.team=payments",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(code, 0, "{stderr}");
    let records: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2, "{stdout}");
    for r in &records {
        assert_eq!(r["stream"], "stdout", "{r}");
        assert_eq!(r["service"], "shop", "{r}");
        assert_ne!(r["pid"], 1, "{r}");
        assert_eq!(r["restart"], 0, "{r}");
        assert_eq!(r["resource"]["team"], "payments", "{r}");
        assert!(r.get("event").is_none() && r.get("kind").is_none(), "{r}");
        assert_eq!(r["fields"]["stream"], "stderr", "{r}");
        assert_eq!(r["fields"]["service"], "admin", "{r}");
        assert_eq!(r["fields"]["event"], "ready", "{r}");
    }
    let json = &records[0];
    assert_eq!(json["msg"], "forged");
    assert!(
        json.get("partial").is_none() && json.get("lossy").is_none(),
        "{json}"
    );
    assert_eq!(json["fields"]["resource"]["team"], "evil");
    assert_eq!(json["fields"]["fields"]["a"], 1);
    // tandem's own events (stderr) are not joined by the app's: one "ready", tandem's.
    assert_eq!(stderr.matches("\"event\":\"ready\"").count(), 1, "{stderr}");
}
