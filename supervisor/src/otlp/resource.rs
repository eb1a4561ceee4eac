//! The resource every signal carries: service, host, process and the orchestrator's identity.
//!
//! One source for all of tandem's OTLP (its spans, the app's log records, its metrics, and the
//! app's own telemetry passing through): OpenTelemetry semantic-convention names, plain strings.
//!
//! Built from plain data passed in (the service name and the identity attributes the caller
//! read once: host name, container id, systemd and Nomad variables), so this module reads no
//! log-pipeline type; what it reads itself is only this process (pid, executable, cgroup).
use std::collections::BTreeMap;

/// The resource of this process for `service`, whose identity attributes (`host.name`,
/// `container.id`, `nomad.*`, ...) the caller read once, for both the log pipeline and OTLP.
/// `service.instance.id` is the host name and tandem's pid unless Nomad's alloc id is known.
pub fn of_process(service: &str, identity: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut out = from_parts(service, identity, std::process::id());
    if let Some(unit) = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|c| systemd_unit(&c))
    {
        out.insert("systemd.unit".into(), unit);
    }
    if let Some(name) = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
    {
        out.insert("process.executable.name".into(), name);
    }
    out.insert("os.type".into(), "linux".into());
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    out.insert("host.arch".into(), arch.into());
    out
}

/// The systemd service tandem runs in, from `/proc/self/cgroup` (`0::/system.slice/x.service`).
pub fn systemd_unit(cgroup: &str) -> Option<String> {
    cgroup
        .lines()
        .filter_map(|l| l.rsplit(':').next())
        .flat_map(|path| path.split('/'))
        .rfind(|seg| seg.ends_with(".service"))
        .map(str::to_string)
}

/// Build from already-read parts (testable without touching the process).
pub fn from_parts(
    service: &str,
    identity: &BTreeMap<String, String>,
    pid: u32,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    out.insert("service.name".to_string(), service.to_string());
    out.insert("telemetry.sdk.name".to_string(), "tandem".into());
    out.insert(
        "tandem.version".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    );
    out.insert("process.pid".to_string(), pid.to_string());
    for (k, v) in identity {
        out.insert(k.clone(), v.clone());
    }
    let instance = identity.get("nomad.alloc_id").cloned().unwrap_or_else(|| {
        let host = identity.get("host.name").map_or("localhost", |h| h);
        format!("{host}-{pid}")
    });
    out.insert("service.instance.id".to_string(), instance);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_unit_from_cgroup() {
        assert_eq!(
            systemd_unit("0::/system.slice/billing.service\n").as_deref(),
            Some("billing.service")
        );
        assert_eq!(
            systemd_unit(
                "12:pids:/user.slice/user-1000.slice/user@1000.service/app.slice/x.service"
            )
            .as_deref(),
            Some("x.service")
        );
        assert_eq!(systemd_unit("0::/docker/abc"), None);
    }

    #[test]
    fn nomad_alloc_is_the_instance() {
        let identity = BTreeMap::from([
            ("host.name".to_string(), "h".to_string()),
            ("nomad.alloc_id".to_string(), "a1".to_string()),
        ]);
        let r = from_parts("svc", &identity, 7);
        assert_eq!(r["service.name"], "svc");
        assert_eq!(r["service.instance.id"], "a1");
        assert_eq!(r["nomad.alloc_id"], "a1");
        assert_eq!(r["host.name"], "h");
        let host_only = BTreeMap::from([("host.name".to_string(), "h".to_string())]);
        assert_eq!(
            from_parts("svc", &host_only, 7)["service.instance.id"],
            "h-7"
        );
    }
}
