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
