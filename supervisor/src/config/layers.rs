//! Loading and merging config layers, remembering where every value came from.
//!
//! Order, later wins: built-in defaults < `include`d files (depth first, before the file that
//! includes them) < `--config` files in the order given < `TANDEM_*` variables < flags.
//! Invariant: every layer is checked against the schema *on its own* before it is merged, so an
//! error can always name its origin (file + line + key, variable, or flag); the merged result is
//! then deserialized once more and checked into its typed form ([`super::checked::check`]),
//! whose errors are placed by [`Origins::locate`] from the same record of origins.
use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use toml::{Table, Value};

use super::{checked::Checked, Config, ConfigError};

/// Where a config value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// tandem's built-in default.
    Default,
    /// A config file (service file or an `include`d platform file).
    File(PathBuf),
    /// A `TANDEM_*` environment variable.
    Env(String),
    /// A command-line flag.
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Env(v) => write!(f, "env {v}"),
            Source::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// Values given on the command line, as dotted keys (`restart.policy`) with raw strings.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// The app's command (after `--`); empty means "use app.command".
    pub command: Vec<String>,
    /// `(key, raw value, flag as the user wrote it)`, in order.
    pub values: Vec<(String, String, String)>,
    /// Whether a missing command is an error (`tandem check` may run without one).
    pub require_command: bool,
    /// Listeners from `--proxy` flags, appended to `proxy.listeners`.
    pub proxy: Vec<tandem_proxy::ListenerConfig>,
}

/// The merged config in its checked form, and the origin of each value.
#[derive(Debug)]
pub struct Loaded {
    /// The config and what is derived from it, checked: all a run starts from.
    pub checked: Checked,
    /// Things worth saying that are not errors (unknown `TANDEM_*` variables).
    pub warnings: Vec<String>,
    sources: Origins,
}

/// Where each key's value came from, and the line of each key in each file: how an error
/// found after merging (a bad pattern, an unreadable token file) names file, line and key.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    sources: BTreeMap<String, Source>,
    /// Per file: dotted key (`proxy.listeners[1].upstream`) → 1-based line.
    lines: BTreeMap<PathBuf, BTreeMap<String, usize>>,
}

/// Variables that start with `TANDEM_` but are not config keys.
const RESERVED_ENV: &[&str] = &["TANDEM_LOG", "TANDEM_LOG_FORMAT"];

/// The whole schema as a table: the defaults plus every optional key and table (those with
/// no default, absent from the defaults table), each with an example value. Flags and
/// `TANDEM_*` variables may set any leaf of it, values are typed by it, and `tandem check`
/// lists the optional parts a config did not set from it, commented out.
fn schema() -> Table {
    use crate::health::probe::{ProbeConfig, ProbeKind, TargetSpec};
    let mut c = Config::default();
    c.service.name = Some("billing".into());
    c.service.version = Some("1.4.2".into());
    c.app.workdir = Some("/srv/billing".into());
    c.app.user = Some("nobody".into());
    c.app.group = Some("nogroup".into());
    c.admin.token_file = Some("/run/secrets/tandem-admin-token".into());
    let probe = |target: &str| ProbeConfig {
        kind: ProbeKind::Http,
        target: TargetSpec::Line(target.into()),
        interval: std::time::Duration::from_secs(2),
        timeout: std::time::Duration::from_secs(1),
        success_threshold: 1,
        failure_threshold: 3,
        initial_delay: std::time::Duration::ZERO,
    };
    c.health.readiness = Some(probe("http://127.0.0.1:3000/ready"));
    c.health.liveness = Some(probe("http://127.0.0.1:3000/health"));
    for stream in [&mut c.logs.stdout, &mut c.logs.stderr] {
        stream.multiline.start = Some(r"^\d{4}-\d{2}-\d{2}".into());
        stream.multiline.continue_ = Some(r"^\s".into());
    }
    c.logs.sinks.file = Some(crate::logs::config::FileSinkConfig {
        path: "/var/log/tandem/app.jsonl".into(),
        rotate_every: Some(std::time::Duration::from_secs(86_400)),
        ..Default::default()
    });
    c.logs.tail = Some(crate::logs::config::TailConfig {
        paths: vec!["/alloc/logs/app.std*".into()],
        checkpoint: Some("/alloc/data/tandem.checkpoint".into()),
        ..Default::default()
    });
    Table::try_from(c).expect("the schema example serializes")
}

/// Load `files` (each with its includes), then apply `env` (its `TANDEM_*` variables; the
/// `OTEL_*` ones are read by the telemetry and pass-through checks) and `overrides`, and check
/// the result into its [`Checked`] form. A run and `tandem check` both call this, so both
/// report the same errors.
pub fn load(
    files: &[PathBuf],
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &Overrides,
) -> Result<Loaded, ConfigError> {
    let env: BTreeMap<String, String> = env.into_iter().collect();
    if files.is_empty()
        && overrides.values.is_empty()
        && overrides.proxy.is_empty()
        && tandem_vars(&env).all(|var| RESERVED_ENV.contains(&var))
    {
        return load_plain(&env, overrides);
    }
    let defaults = Table::try_from(Config::default()).expect("the default config serializes");
    // The schema (the defaults again, with every optional part filled in) is only needed to
    // type `TANDEM_*` variables and flags and to explain an error: not on a plain start.
    let schema_once = std::cell::OnceCell::new();
    let schema = || schema_once.get_or_init(schema);
    let mut sources = BTreeMap::new();
    record_sources(&defaults, "", &Source::Default, &mut sources);
    let mut merged = defaults.clone();
    let mut lines = BTreeMap::new();

    let mut layers = Vec::new();
    for file in files {
        load_file(file, &mut Vec::new(), &mut layers, &mut lines)?;
    }
    for (table, source) in layers {
        merge(&mut merged, table, "", &source, &mut sources);
    }

    let known_once = std::cell::OnceCell::new();
    let known = || known_once.get_or_init(|| known_keys(schema()));
    let mut warnings = Vec::new();
    for var in tandem_vars(&env) {
        if RESERVED_ENV.contains(&var) {
            continue;
        }
        let raw = &env[var];
        let Some(key) = known().get(var) else {
            // A warning, not an error: other tools (and CI systems) set TANDEM_* variables
            // too, and the app must still start. Files, where typos live, stay strict.
            warnings.push(format!(
                "environment variable {var} is not a tandem config key; ignored (see `tandem check` for the keys)"
            ));
            continue;
        };
        let layer =
            single_value(schema(), key, raw).map_err(|e| ConfigError::via(var, key, e.0))?;
        merge(
            &mut merged,
            layer,
            "",
            &Source::Env(var.to_string()),
            &mut sources,
        );
    }

    for (key, raw, flag) in &overrides.values {
        if !known().values().any(|k| k == key) && !in_free_form_table(schema(), key) {
            return Err(ConfigError::via(flag, key, "unknown config key"));
        }
        let layer =
            single_value(schema(), key, raw).map_err(|e| ConfigError::via(flag, key, e.0))?;
        merge(
            &mut merged,
            layer,
            "",
            &Source::Flag(flag.clone()),
            &mut sources,
        );
    }
    if !overrides.command.is_empty() {
        let layer = leaf_table(
            "app.command",
            Value::Array(
                overrides
                    .command
                    .iter()
                    .cloned()
                    .map(Value::String)
                    .collect(),
            ),
        );
        merge(
            &mut merged,
            layer,
            "",
            &Source::Flag("-- CMD".into()),
            &mut sources,
        );
    }

    if !overrides.proxy.is_empty() {
        let listeners = merged
            .entry("proxy")
            .or_insert_with(|| Value::Table(Table::new()))
            .as_table_mut()
            .and_then(|t| {
                t.entry("listeners")
                    .or_insert_with(|| Value::Array(Vec::new()))
                    .as_array_mut()
            });
        if let Some(listeners) = listeners {
            for l in &overrides.proxy {
                let v = Value::try_from(l)
                    .map_err(|e| ConfigError::via("--proxy", "proxy.listeners", e.to_string()))?;
                listeners.push(v);
            }
            sources.insert("proxy.listeners".into(), Source::Flag("--proxy".into()));
        }
    }
    sources.retain(|k, _| k != "include");
    let origins = Origins { sources, lines };
    let config: Config =
        merged.clone().try_into().map_err(|e: toml::de::Error| {
            match incomplete(&defaults, schema(), &merged, &origins.sources) {
                Some((key, message)) => origins.locate(ConfigError::key(key, message)),
                None => ConfigError::keyed(e.message().trim()),
            }
        })?;
    let checked = super::checked::check(
        config,
        &env,
        overrides.require_command,
        origins.source("admin.listen") != Some(&Source::Default),
    )
    .map_err(|e| origins.locate(e))?;
    Ok(Loaded {
        checked,
        warnings,
        sources: origins,
    })
}

/// The `TANDEM_*` variables of `env`, in order.
fn tandem_vars(env: &BTreeMap<String, String>) -> impl Iterator<Item = &str> {
    env.range("TANDEM_".to_string()..)
        .map(|(k, _)| k.as_str())
        .take_while(|k| k.starts_with("TANDEM_"))
}

/// A plain start (`tandem -- CMD`: no file, no `TANDEM_*` config variable, no `--set` or
/// `--proxy`): the defaults and the command, checked as [`load`] checks them, without the
/// round trip of the defaults through a TOML table (a third of tandem's own work before it
/// starts the app, BENCHMARKS.md). A value not recorded in the sources is a default
/// ([`Origins::source`] returns None for it, and `render` says `default`); the test
/// `a_plain_start_is_the_merge_of_the_defaults_and_the_command` keeps the two paths equal.
fn load_plain(
    env: &BTreeMap<String, String>,
    overrides: &Overrides,
) -> Result<Loaded, ConfigError> {
    let mut config = Config::default();
    let mut sources = BTreeMap::new();
    if !overrides.command.is_empty() {
        config.app.command.clone_from(&overrides.command);
        sources.insert("app.command".to_string(), Source::Flag("-- CMD".into()));
    }
    let origins = Origins {
        sources,
        lines: BTreeMap::new(),
    };
    let checked = super::checked::check(config, env, overrides.require_command, false)
        .map_err(|e| origins.locate(e))?;
    Ok(Loaded {
        checked,
        warnings: Vec::new(),
        sources: origins,
    })
}

// === impl Origins ===

impl Origins {
    /// Where the value at dotted `key` came from.
    pub fn source(&self, key: &str) -> Option<&Source> {
        self.sources.get(key)
    }

    /// `err` with the place its key was set: the file and line, or the variable or flag. A
    /// key inside a value (`proxy.listeners[1].upstream`, `telemetry.headers.x-api-key`) is
    /// placed at the nearest key that was set.
    pub fn locate(&self, mut err: ConfigError) -> ConfigError {
        if err.key.is_empty() || err.file.is_some() || err.via.is_some() {
            return err;
        }
        let Some((set, source)) = self.set_at(&err.key) else {
            return err;
        };
        match source {
            Source::Default => {}
            Source::File(path) => {
                err.line = self.line(path, &err.key).or_else(|| self.line(path, &set));
                err.file = Some(path.clone());
            }
            Source::Env(var) => err.via = Some(var.clone()),
            Source::Flag(flag) => err.via = Some(flag.clone()),
        }
        err
    }

    /// The key that set `key`'s value, and its source: `key` itself, a parent (a whole array
    /// or free-form table), or else the last-merged key below it.
    fn set_at(&self, key: &str) -> Option<(String, &Source)> {
        let plain = strip_indexes(key);
        let mut k = plain.as_str();
        loop {
            if let Some(s) = self.sources.get(k) {
                return Some((k.to_string(), s));
            }
            match k.rsplit_once('.') {
                Some((parent, _)) => k = parent,
                None => break,
            }
        }
        let below = format!("{plain}.");
        self.sources
            .iter()
            .find(|(k, _)| k.starts_with(&below))
            .map(|(k, s)| (k.clone(), s))
    }

    /// The line of `key` (or of its nearest parent written in the file) in `path`.
    fn line(&self, path: &Path, key: &str) -> Option<usize> {
        let lines = self.lines.get(path)?;
        let mut k = key.to_string();
        loop {
            if let Some(l) = lines.get(&k) {
                return Some(*l);
            }
            let cut = k.rfind(['.', '['])?;
            k.truncate(cut);
        }
    }
}

/// `proxy.listeners[1].upstream` → `proxy.listeners.upstream`.
fn strip_indexes(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut depth = 0;
    for c in key.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// Every dotted key a file defines, with its 1-based line: `[table]` headers, `key = value`
/// lines under them, and the entries of `[[array]]` tables as `array[i].key`.
fn key_lines(text: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let mut section = String::new();
    let mut arrays: BTreeMap<String, usize> = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let t = raw.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if let Some(name) = t.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_string();
            let n = arrays.entry(name.clone()).or_insert(0);
            section = format!("{name}[{n}]");
            *n += 1;
            out.entry(name).or_insert(line);
            out.insert(section.clone(), line);
            continue;
        }
        if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
            section = name.trim().to_string();
            out.entry(section.clone()).or_insert(line);
            continue;
        }
        let Some((key, _)) = t.split_once('=') else {
            continue;
        };
        let key = key
            .split('.')
            .map(|p| p.trim().trim_matches('"'))
            .collect::<Vec<_>>()
            .join(".");
        let full = if section.is_empty() {
            key
        } else {
            format!("{section}.{key}")
        };
        out.entry(full).or_insert(line);
    }
    out
}

// === impl Loaded ===

impl Loaded {
    /// Where the value at dotted `key` came from.
    pub fn source(&self, key: &str) -> Option<&Source> {
        self.sources.source(key)
    }

    /// The effective config as TOML, each value followed by a comment naming its source.
    pub fn render(&self) -> String {
        // The typed config, not the raw layers: one canonical spelling per value.
        let merged = Table::try_from(&self.checked.config).expect("a loaded config serializes");
        let mut out = String::new();
        render_table(&merged, "", &self.sources.sources, &redactor(), &mut out);
        render_implicit(&self.checked.config, &mut out);
        render_absent(&schema(), &merged, &mut out);
        out
    }
}

/// The largest config file read: far above any real one (a few KiB), far below what would
/// hurt a small host.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Reads a config file: a regular file (checked before opening, so a FIFO cannot block
/// tandem and `/dev/zero` cannot fill its memory) of at most [`MAX_FILE_BYTES`], in UTF-8.
fn read_file(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read as _;

    let unreadable = |reason: String| ConfigError::file(path, format!("config file: {reason}"));
    let read_err =
        |e: std::io::Error| ConfigError::file(path, format!("cannot read config file: {e}"));
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if !meta.is_file() {
        return Err(unreadable(
            "not a regular file (a device, FIFO or directory cannot be a config file)".into(),
        ));
    }
    let too_large = || unreadable(format!("larger than the limit of {MAX_FILE_BYTES} bytes"));
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(read_err)?
        // One byte more than the limit: a file that grew since the check is still caught.
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large());
    }
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        unreadable(format!("not UTF-8 (invalid byte at offset {at})"))
    })
}

fn load_file(
    path: &Path,
    stack: &mut Vec<PathBuf>,
    layers: &mut Vec<(Table, Source)>,
    lines: &mut BTreeMap<PathBuf, BTreeMap<String, usize>>,
) -> Result<(), ConfigError> {
    let text = read_file(path)?;
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if stack.contains(&canonical) {
        let chain = stack
            .iter()
            .chain([&canonical])
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" -> ");
        return Err(ConfigError::file(path, format!("include cycle: {chain}")));
    }
    // Check this file alone against the schema: toml's errors carry the span we turn into
    // line, column and key.
    if let Err(e) = toml::from_str::<Config>(&text) {
        return Err(file_error(path, &text, &e));
    }
    let mut table: Table = text
        .parse()
        .map_err(|e: toml::de::Error| file_error(path, &text, &e))?;
    let includes = match table.remove("include") {
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    };
    stack.push(canonical);
    let base = path.parent().unwrap_or(Path::new("."));
    for inc in includes {
        if let Value::String(inc) = inc {
            let inc = PathBuf::from(inc);
            let inc = if inc.is_absolute() {
                inc
            } else {
                base.join(inc)
            };
            load_file(&inc, stack, layers, lines)?;
        }
    }
    stack.pop();
    lines.insert(path.to_path_buf(), key_lines(&text));
    layers.push((table, Source::File(path.to_path_buf())));
    Ok(())
}

/// Turn a toml error into file:line plus the dotted key it is about.
fn file_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let (line, key) = match e.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let line = text[..start].matches('\n').count() + 1;
            (Some(line), key_at(text, line))
        }
        None => (None, String::new()),
    };
    ConfigError {
        line,
        ..ConfigError::file(path, e.message().trim())
    }
    .with_key(key)
}

/// The dotted key defined on 1-based `line`: the nearest `[table]` header above it, plus the
/// key left of `=` on that line (or the header itself when the line is one).
fn key_at(text: &str, line: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let Some(current) = lines.get(line.saturating_sub(1)) else {
        return String::new();
    };
    let header = |l: &str| {
        let t = l.trim();
        (t.starts_with('[') && t.ends_with(']'))
            .then(|| t.trim_matches(|c| c == '[' || c == ']').trim().to_string())
    };
    if let Some(h) = header(current) {
        return h;
    }
    let key = current
        .split('=')
        .next()
        .unwrap_or("")
        .trim()
        .trim_matches('"')
        .to_string();
    let section = lines[..line.saturating_sub(1)]
        .iter()
        .rev()
        .find_map(|l| header(l));
    match section {
        Some(s) if !key.is_empty() => format!("{s}.{key}"),
        _ => key,
    }
}

/// An optional table that flags or variables began but did not complete (`--set
/// health.readiness.kind=tcp` without a `target`): its name, what is missing, and who set it.
fn incomplete(
    defaults: &Table,
    schema: &Table,
    merged: &Table,
    sources: &BTreeMap<String, Source>,
) -> Option<(String, String)> {
    let mut optional = Vec::new();
    optional_tables(schema, defaults, "", &mut optional);
    optional.into_iter().find_map(|path| {
        let value = lookup(merged, &path)?.clone();
        let mut alone = defaults.clone();
        merge(
            &mut alone,
            leaf_table(&path, value),
            "",
            &Source::Default,
            &mut BTreeMap::new(),
        );
        let err = alone.try_into::<Config>().err()?;
        let set_by: Vec<String> = sources
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{path}.")))
            .map(|(k, s)| format!("{k} ({s})"))
            .collect();
        let message = format!(
            "the table [{path}] is incomplete: {} (set: {})",
            err.message().trim(),
            set_by.join(", ")
        );
        Some((path, message))
    })
}

/// Dotted paths of the tables in `schema` that `defaults` does not have.
fn optional_tables(schema: &Table, defaults: &Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in schema {
        let path = join(prefix, k);
        if let Value::Table(t) = v {
            match defaults.get(k) {
                Some(Value::Table(d)) => optional_tables(t, d, &path, out),
                _ => out.push(path),
            }
        }
    }
}

/// `key` names an entry of a table whose keys are the user's (`app.env.NAME`,
/// `logs.attributes.NAME`): a flag may set it.
fn in_free_form_table(schema: &Table, key: &str) -> bool {
    key.rsplit_once('.').is_some_and(|(parent, name)| {
        !name.is_empty() && matches!(lookup(schema, parent), Some(Value::Table(t)) if t.is_empty())
    })
}

/// Map `TANDEM_RESTART_POLICY` style names to dotted keys, for every key the schema has.
fn known_keys(schema: &Table) -> BTreeMap<String, String> {
    let mut keys = Vec::new();
    leaf_keys(schema, "", &mut keys);
    keys.into_iter()
        .filter(|k| k != "include")
        .map(|k| {
            (
                format!("TANDEM_{}", k.to_ascii_uppercase().replace('.', "_")),
                k,
            )
        })
        .collect()
}

fn leaf_keys(table: &Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in table {
        let path = join(prefix, k);
        match v {
            // A table whose keys are free-form (app.env) is set as a whole from files only.
            Value::Table(t) if !t.is_empty() => leaf_keys(t, &path, out),
            Value::Table(_) => {}
            _ => out.push(path),
        }
    }
}

/// Why a value does not fit the schema at its key (serde's message).
#[derive(Debug)]
struct SchemaMismatch(String);

/// Build a one-value layer from a raw string, typed by the schema at that key, and check it
/// against the schema on its own (on top of the schema's example, so a key of an optional
/// table is checked without the table's other, required keys).
fn single_value(schema: &Table, key: &str, raw: &str) -> Result<Table, SchemaMismatch> {
    let value = match lookup(schema, key) {
        None | Some(Value::String(_)) => Value::String(raw.to_string()),
        Some(Value::Array(_)) if !raw.trim_start().starts_with('[') => Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect(),
        ),
        Some(_) => match format!("v = {raw}").parse::<Table>() {
            Ok(mut t) => t
                .remove("v")
                .unwrap_or_else(|| Value::String(raw.to_string())),
            Err(_) => Value::String(raw.to_string()),
        },
    };
    let layer = leaf_table(key, value);
    let mut check = schema.clone();
    merge(
        &mut check,
        layer.clone(),
        "",
        &Source::Default,
        &mut BTreeMap::new(),
    );
    check
        .try_into::<Config>()
        .map_err(|e: toml::de::Error| SchemaMismatch(e.message().trim().to_string()))?;
    Ok(layer)
}

fn lookup<'a>(table: &'a Table, key: &str) -> Option<&'a Value> {
    let mut parts = key.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

fn leaf_table(key: &str, value: Value) -> Table {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap_or(key);
    let mut table = Table::new();
    table.insert(last.to_string(), value);
    for part in parts.into_iter().rev() {
        let mut outer = Table::new();
        outer.insert(part.to_string(), Value::Table(table));
        table = outer;
    }
    table
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        // Concatenated by hand: this runs for every key of the defaults on each start.
        let mut path = String::with_capacity(prefix.len() + 1 + key.len());
        path.push_str(prefix);
        path.push('.');
        path.push_str(key);
        path
    }
}

fn merge(
    base: &mut Table,
    over: Table,
    prefix: &str,
    source: &Source,
    sources: &mut BTreeMap<String, Source>,
) {
    for (k, v) in over {
        let path = join(prefix, &k);
        match (base.get_mut(&k), v) {
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o, &path, source, sources),
            (_, v) => {
                // The key and every key below it: `path.` sorts them together after `path`.
                let below = format!("{path}.");
                let stale: Vec<String> = std::iter::once(path.clone())
                    .filter(|p| sources.contains_key(p))
                    .chain(
                        sources
                            .range::<String, _>(&below..)
                            .map(|(k, _)| k)
                            .take_while(|k| k.starts_with(&below))
                            .cloned(),
                    )
                    .collect();
                for k in &stale {
                    sources.remove(k);
                }
                match &v {
                    Value::Table(t) => record_sources(t, &path, source, sources),
                    _ => {
                        sources.insert(path, source.clone());
                    }
                }
                base.insert(k, v);
            }
        }
    }
}

fn record_sources(
    table: &Table,
    prefix: &str,
    source: &Source,
    sources: &mut BTreeMap<String, Source>,
) {
    for (k, v) in table {
        let path = join(prefix, k);
        match v {
            Value::Table(t) => record_sources(t, &path, source, sources),
            _ => {
                sources.insert(path, source.clone());
            }
        }
    }
}

/// Whether a config key names a secret value (`app.env.DB_PASSWORD`, `API_TOKEN`), rather
/// than a file holding one (`token_file`, `keys_file`): `tandem check` prints `[REDACTED]`.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    if k.ends_with("_file") || k.ends_with("_path") || k == "key" {
        return false;
    }
    [
        "password",
        "passwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "credential",
        "private_key",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// Replaces the `user:password@` of every URL in `text` with `[REDACTED]@`.
pub fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#' | '"' | '\'' | '\\') || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("[REDACTED]");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// `text` as tandem's own events and `tandem check` may print it: the default log patterns
/// (bearer tokens, JWTs, AWS keys, `password=` pairs) and URL credentials redacted.
pub fn redact_text(text: &str) -> String {
    if !crate::logs::redact::built_in_may_match(text) {
        // Compiling the patterns was most of `tandem -- true`'s start-up (the app's command
        // line is logged at every start): skip it when none could match.
        return redact_userinfo(text);
    }
    static REDACTOR: std::sync::OnceLock<crate::logs::redact::Redactor> =
        std::sync::OnceLock::new();
    redact_userinfo(&REDACTOR.get_or_init(redactor).text(text))
}

fn redactor() -> crate::logs::redact::Redactor {
    crate::logs::redact::Redactor::new(&crate::logs::redact::RedactConfig::default())
        .expect("the built-in patterns compile")
}

/// What tandem does in place of a setting the config left out, where that is not obvious.
fn render_implicit(config: &Config, out: &mut String) {
    use std::fmt::Write;
    if let Some(probe) = config.implicit_readiness() {
        let _ = writeln!(
            out,
            "\n# [health.readiness] is not set: with proxy listeners, the app is ready once its\n\
             # upstream accepts a TCP connection (implicit probe: {probe}); see docs/RELIABILITY.md"
        );
    }
}

/// The optional keys and tables of the schema that `merged` does not have, commented out with
/// an example value, so `tandem check` shows every key there is.
fn render_absent(schema: &Table, merged: &Table, out: &mut String) {
    use std::fmt::Write;
    let mut absent: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    absent_leaves(schema, merged, "", &mut absent);
    if absent.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n# Optional, not set (in a file, with --set KEY=VALUE, or a TANDEM_* variable):"
    );
    for (table, keys) in absent {
        let _ = writeln!(out, "# [{table}]");
        for (k, v) in keys {
            let _ = writeln!(out, "# {k} = {v}");
        }
    }
}

fn absent_leaves(
    schema: &Table,
    merged: &Table,
    prefix: &str,
    out: &mut BTreeMap<String, Vec<(String, String)>>,
) {
    for (k, v) in schema {
        let path = join(prefix, k);
        match (v, merged.get(k)) {
            (Value::Table(t), Some(Value::Table(m))) => absent_leaves(t, m, &path, out),
            (Value::Table(t), None) => absent_leaves(t, &Table::new(), &path, out),
            (_, Some(_)) => {}
            (v, None) => out
                .entry(prefix.to_string())
                .or_default()
                .push((k.clone(), v.to_string())),
        }
    }
}

fn render_table(
    table: &Table,
    prefix: &str,
    sources: &BTreeMap<String, Source>,
    redact: &crate::logs::redact::Redactor,
    out: &mut String,
) {
    use std::fmt::Write;
    let (tables, leaves): (Vec<_>, Vec<_>) = table.iter().partition(|(_, v)| v.is_table());
    if !prefix.is_empty() && !leaves.is_empty() {
        let _ = writeln!(out, "\n[{prefix}]");
    }
    for (k, v) in leaves {
        let path = join(prefix, k);
        let source = sources
            .get(&path)
            .map_or_else(|| "default".to_string(), |s| s.to_string());
        let key = if k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            k.clone()
        } else {
            format!("{k:?}")
        };
        // OTLP export headers carry the receiver's API key, whatever the header's name.
        let value = if is_secret_key(k) || path.starts_with("telemetry.headers.") {
            "\"[REDACTED]\"".to_string()
        } else {
            // A secret inside a value (a command line's `--password=...`): the log patterns;
            // credentials in a URL (`jwks_url = "https://user:pw@idp/..."`), even inside an
            // array of tables such as `proxy.listeners`.
            redact_userinfo(&redact.text(&v.to_string()))
        };
        let _ = writeln!(out, "{key} = {value}  # {source}");
    }
    for (k, v) in tables {
        if let Value::Table(t) = v {
            render_table(t, &join(prefix, k), sources, redact, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn secret_keys() {
        for k in [
            "DB_PASSWORD",
            "api_token",
            "AWS_SECRET_ACCESS_KEY",
            "STRIPE_API_KEY",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in ["token_file", "keys_file", "listen", "key", "PATH"] {
            assert!(!is_secret_key(k), "{k}");
        }
    }

    #[test]
    fn userinfo_in_urls() {
        assert_eq!(
            redact_userinfo(
                r#"[{ jwks_url = "https://bob:pw@idp.test:8443/keys", x = "http://h/" }]"#
            ),
            r#"[{ jwks_url = "https://[REDACTED]@idp.test:8443/keys", x = "http://h/" }]"#
        );
        assert_eq!(redact_userinfo("no url here"), "no url here");
        assert_eq!(
            redact_userinfo("redis://:pw@cache"),
            "redis://[REDACTED]@cache"
        );
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn cmd() -> Overrides {
        Overrides {
            command: vec!["true".into()],
            values: vec![],
            require_command: true,
            ..Overrides::default()
        }
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let f = file("[app]\nstop_timeout = \"5s\"\nstop_tmeout = \"5s\"\n");
        let err = load(&[f.path().into()], [], &cmd())
            .unwrap_err()
            .to_string();
        assert!(err.contains(&f.path().display().to_string()), "{err}");
        assert!(err.contains(":3:"), "{err}");
        assert!(err.contains("app.stop_tmeout"), "{err}");
    }

    #[test]
    fn bad_duration_and_wrong_type() {
        let f = file("[restart]\nmax_delay = \"5 parsecs\"\n");
        let err = load(&[f.path().into()], [], &cmd())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(":2:") && err.contains("restart.max_delay"),
            "{err}"
        );
        let f = file("[restart]\nstart_limit_burst = \"many\"\n");
        let err = load(&[f.path().into()], [], &cmd())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(":2:") && err.contains("restart.start_limit_burst"),
            "{err}"
        );
    }

    #[test]
    fn a_plain_start_is_the_merge_of_the_defaults_and_the_command() {
        // an empty file: the full merge of the defaults and the command
        let empty = file("");
        let env = || [("TANDEM_LOG".to_string(), "warn".to_string())];
        let merged = load(&[empty.path().to_path_buf()], env(), &cmd()).unwrap();
        let plain = load(&[], env(), &cmd()).unwrap();
        assert_eq!(
            Table::try_from(&plain.checked.config).unwrap(),
            Table::try_from(&merged.checked.config).unwrap()
        );
        assert_eq!(plain.render(), merged.render());
        assert_eq!(plain.source("app.command"), merged.source("app.command"));
        // no command where one is required: the same error either way
        let none = Overrides {
            require_command: true,
            ..Overrides::default()
        };
        let a = load(&[], env(), &none).err().map(|e| e.to_string());
        let b = load(&[empty.path().to_path_buf()], env(), &none)
            .err()
            .map(|e| e.to_string());
        assert!(a.is_some());
        assert_eq!(a, b);
        // a TANDEM_* variable that is not a config key still warns
        let odd = [("TANDEM_NOT_A_KEY".to_string(), "1".to_string())];
        assert_eq!(load(&[], odd, &cmd()).unwrap().warnings.len(), 1);
    }

    #[test]
    fn layers_in_order_with_sources() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("platform.toml"),
            "[app]\nstop_timeout = \"20s\"\n[restart]\npolicy = \"always\"\n",
        )
        .unwrap();
        let svc = dir.path().join("svc.toml");
        std::fs::write(
            &svc,
            "include = [\"platform.toml\"]\n[restart]\npolicy = \"on-failure\"\n",
        )
        .unwrap();
        let env = [
            ("TANDEM_RESTART_MAX_DELAY".to_string(), "9s".to_string()),
            ("PATH".into(), "/bin".into()),
        ];
        let mut ov = cmd();
        ov.values.push((
            "app.stop_signal".into(),
            "quit".into(),
            "--stop-signal".into(),
        ));
        let loaded = load(std::slice::from_ref(&svc), env, &ov).unwrap();
        let c = &loaded.checked.config;
        assert_eq!(c.app.stop_timeout, std::time::Duration::from_secs(20));
        assert_eq!(c.restart.policy, super::super::RestartPolicy::OnFailure);
        assert_eq!(c.restart.max_delay, std::time::Duration::from_secs(9));
        assert_eq!(c.app.stop_signal.0, nix::sys::signal::Signal::SIGQUIT);
        assert_eq!(
            loaded.source("app.stop_timeout"),
            Some(&Source::File(dir.path().join("platform.toml")))
        );
        assert_eq!(loaded.source("restart.policy"), Some(&Source::File(svc)));
        assert_eq!(
            loaded.source("restart.max_delay"),
            Some(&Source::Env("TANDEM_RESTART_MAX_DELAY".into()))
        );
        assert_eq!(loaded.source("restart.jitter"), Some(&Source::Default));
        let text = loaded.render();
        assert!(
            text.contains("stop_signal = \"SIGQUIT\"  # flag --stop-signal"),
            "{text}"
        );
    }

    #[test]
    fn env_errors_name_the_variable() {
        let err = load(
            &[],
            [("TANDEM_RESTART_POLICY".to_string(), "sometimes".to_string())],
            &cmd(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("TANDEM_RESTART_POLICY") && err.contains("sometimes"),
            "{err}"
        );
        let loaded = load(&[], [("TANDEM_NOPE".to_string(), "1".to_string())], &cmd()).unwrap();
        assert!(
            loaded.warnings[0].contains("TANDEM_NOPE"),
            "{:?}",
            loaded.warnings
        );
        let ok = load(
            &[],
            [(
                "TANDEM_APP_FORWARD_SIGNALS".to_string(),
                "HUP, USR1".to_string(),
            )],
            &cmd(),
        )
        .unwrap();
        assert_eq!(ok.checked.config.app.forward_signals.len(), 2);
    }

    #[test]
    fn include_cycle_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.toml"), "include = [\"b.toml\"]\n").unwrap();
        std::fs::write(dir.path().join("b.toml"), "include = [\"a.toml\"]\n").unwrap();
        let err = load(&[dir.path().join("a.toml")], [], &cmd())
            .unwrap_err()
            .to_string();
        assert!(err.contains("include cycle"), "{err}");
    }

    #[test]
    fn validation_names_the_key() {
        let err = load(
            &[],
            [],
            &Overrides {
                require_command: true,
                ..Overrides::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("no command"), "{err}");
        let f = file("[app]\nforward_signals = [\"KILL\"]\n");
        let err = load(&[f.path().into()], [], &cmd())
            .unwrap_err()
            .to_string();
        assert!(err.contains("app.forward_signals"), "{err}");
    }
}
