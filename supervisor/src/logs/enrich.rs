//! Enrichment: who wrote a record (service, app instance) and where it ran (resource).
//!
//! Invariant: the environment is read once, when the pipeline starts ([`LogContext::from_process`]),
//! and rendered once per app instance into an [`Origin`]; nothing here runs per record. Only
//! allow-listed environment variables are copied (never a `NOMAD_TOKEN` or other secret).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use regex::Regex;

use super::record::Origin;

/// Nomad variables copied as `nomad.<lowercase rest>` (plus every `NOMAD_META_*`).
const NOMAD_VARS: &[&str] = &[
    "NOMAD_ALLOC_ID",
    "NOMAD_SHORT_ALLOC_ID",
    "NOMAD_ALLOC_NAME",
    "NOMAD_ALLOC_INDEX",
    "NOMAD_TASK_NAME",
    "NOMAD_GROUP_NAME",
    "NOMAD_JOB_ID",
    "NOMAD_JOB_NAME",
    "NOMAD_JOB_PARENT_ID",
    "NOMAD_DC",
    "NOMAD_NAMESPACE",
    "NOMAD_REGION",
];

/// What the pipeline knows about its environment; build it with [`LogContext::from_process`]
/// or by hand in tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogContext {
    /// `service.name` of every record.
    pub service: String,
    /// Resource attributes (OpenTelemetry names where one exists).
    pub resource: BTreeMap<String, String>,
}

/// One run of the app: what changes on every (re)start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppInstance {
    /// The app's pid.
    pub pid: u32,
    /// Restarts before this instance (0 for the first).
    pub restart_count: u32,
}

// === impl LogContext ===

impl LogContext {
    /// Read host name, container id, systemd and Nomad variables of this process.
    pub fn from_process(service: impl Into<String>) -> Self {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let host = read("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty());
        let container = container_id(
            read("/proc/self/cgroup").as_deref().unwrap_or(""),
            read("/proc/self/mountinfo").as_deref().unwrap_or(""),
        );
        Self::from_parts(service.into(), host, container, &env)
    }

    /// Assemble from already-read parts (testable without touching the process).
    pub fn from_parts(
        service: String,
        host: Option<String>,
        container: Option<String>,
        env: &[(String, String)],
    ) -> Self {
        let mut resource = BTreeMap::new();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if let Some(h) = host.or_else(|| get("HOSTNAME")) {
            resource.insert("host.name".into(), h);
        }
        if let Some(c) = container {
            resource.insert("container.id".into(), c);
        }
        if let Some(id) = get("INVOCATION_ID") {
            resource.insert("systemd.invocation_id".into(), id);
        }
        for (k, v) in env {
            if NOMAD_VARS.contains(&k.as_str()) {
                let rest = &k["NOMAD_".len()..];
                resource.insert(format!("nomad.{}", rest.to_ascii_lowercase()), v.clone());
            } else if let Some(meta) = k.strip_prefix("NOMAD_META_") {
                resource.insert(
                    format!("nomad.meta.{}", meta.to_ascii_lowercase()),
                    v.clone(),
                );
            }
        }
        Self { service, resource }
    }

    /// The origin of records from one app instance (None: tail mode, writer unknown), with the
    /// static attributes of the config laid over the detected resource.
    pub fn origin(
        &self,
        statics: &BTreeMap<String, String>,
        instance: Option<AppInstance>,
    ) -> Arc<Origin> {
        let mut resource = self.resource.clone();
        resource.extend(statics.iter().map(|(k, v)| (k.clone(), v.clone())));
        let resource_json = serde_json::to_string(&resource).expect("a map of strings serialises");
        Arc::new(Origin {
            service: self.service.clone(),
            pid: instance.map(|i| i.pid),
            restart_count: instance.map_or(0, |i| i.restart_count),
            resource_json,
        })
    }
}

/// A container id where the kernel shows one: cgroup v1 paths and systemd scopes
/// (`docker-<id>.scope`, `cri-containerd-<id>`, `libpod-<id>`), else cgroup v2's mountinfo
/// (Docker bind-mounts `/var/lib/docker/containers/<id>/hostname`; Podman `overlay-containers`).
pub fn container_id(cgroup: &str, mountinfo: &str) -> Option<String> {
    static CGROUP: OnceLock<Regex> = OnceLock::new();
    static MOUNT: OnceLock<Regex> = OnceLock::new();
    // A container id is 64 hex digits: without a run of them there is nothing to match, and
    // the regexes (compiling them was a good part of start-up) are not needed at all.
    let hex64 = |s: &str| {
        s.as_bytes()
            .split(|b| !b.is_ascii_hexdigit())
            .any(|run| run.len() >= 64)
    };
    let from_cgroup = || {
        if !hex64(cgroup) {
            return None;
        }
        let cgroup_re = CGROUP.get_or_init(|| {
            Regex::new(r"[/-]([0-9a-f]{64})(?:\.scope)?(?:/|$)").expect("pattern compiles")
        });
        cgroup.lines().find_map(|l| cgroup_re.captures(l))
    };
    let from_mounts = || {
        if !hex64(mountinfo) {
            return None;
        }
        let mount_re = MOUNT.get_or_init(|| {
            Regex::new(
                r"/(?:docker/containers|overlay-containers|containerd/[^ ]*/sandboxes)/([0-9a-f]{64})/",
            )
            .expect("pattern compiles")
        });
        mountinfo.lines().find_map(|l| mount_re.captures(l))
    };
    from_cgroup().or_else(from_mounts).map(|c| c[1].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4b5a1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a";

    #[test]
    fn container_id_from_cgroup_v1_scope_and_mountinfo() {
        assert_eq!(
            container_id(&format!("12:pids:/docker/{ID}\n"), "").as_deref(),
            Some(ID)
        );
        assert_eq!(
            container_id(&format!("0::/system.slice/docker-{ID}.scope\n"), "").as_deref(),
            Some(ID)
        );
        let mi = format!("613 600 0:30 /var/lib/docker/containers/{ID}/hostname /etc/hostname rw - ext4 /dev/sda1 rw\n");
        assert_eq!(container_id("0::/\n", &mi).as_deref(), Some(ID));
        assert_eq!(
            container_id("0::/user.slice\n", "1 2 0:1 / / rw - ext4 x rw\n"),
            None
        );
    }

    #[test]
    fn resource_from_env_allow_list_and_statics() {
        let env: Vec<(String, String)> = [
            ("NOMAD_ALLOC_ID", "a1"),
            ("NOMAD_TASK_NAME", "web"),
            ("NOMAD_META_team", "pay"),
            ("NOMAD_TOKEN", "secret"),
            ("INVOCATION_ID", "inv"),
            ("HOME", "/root"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let ctx = LogContext::from_parts("svc".into(), Some("h1".into()), None, &env);
        let statics = BTreeMap::from([("team".to_string(), "core".to_string())]);
        let o = ctx.origin(
            &statics,
            Some(AppInstance {
                pid: 42,
                restart_count: 2,
            }),
        );
        let v: serde_json::Value = serde_json::from_str(&o.resource_json).expect("json");
        assert_eq!(v["host.name"], "h1");
        assert_eq!(v["nomad.alloc_id"], "a1");
        assert_eq!(v["nomad.task_name"], "web");
        assert_eq!(v["nomad.meta.team"], "pay");
        assert_eq!(v["systemd.invocation_id"], "inv");
        assert_eq!(v["team"], "core");
        assert!(!o.resource_json.contains("secret"));
        assert_eq!((o.pid, o.restart_count), (Some(42), 2));
    }
}
