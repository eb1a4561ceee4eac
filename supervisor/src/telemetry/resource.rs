//! The resource every signal carries: service, host, process and the orchestrator's identity.
//!
//! One source for all of tandem's OTLP (its spans, the app's log records, its metrics, and the
//! app's own telemetry passing through): OpenTelemetry semantic-convention names, plain strings.
use std::collections::BTreeMap;

use crate::logs::LogContext;

/// `service.instance.id` is the host name and tandem's pid unless Nomad's alloc id is known.
pub fn attributes(service: &str) -> BTreeMap<String, String> {
    let ctx = LogContext::from_process(service);
    from_context(&ctx, std::process::id())
}

/// Build from an already-read [`LogContext`] (testable without touching the process).
pub fn from_context(ctx: &LogContext, pid: u32) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    out.insert("service.name".to_string(), ctx.service.clone());
    out.insert("telemetry.sdk.name".to_string(), "tandem".into());
    out.insert(
        "tandem.version".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    );
    out.insert("process.pid".to_string(), pid.to_string());
    for (k, v) in &ctx.resource {
        out.insert(k.clone(), v.clone());
    }
    let instance = ctx
        .resource
        .get("nomad.alloc_id")
        .cloned()
        .unwrap_or_else(|| {
            let host = ctx.resource.get("host.name").map_or("localhost", |h| h);
            format!("{host}-{pid}")
        });
    out.insert("service.instance.id".to_string(), instance);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nomad_alloc_is_the_instance() {
        let env = vec![("NOMAD_ALLOC_ID".to_string(), "a1".to_string())];
        let ctx = LogContext::from_parts("svc".into(), Some("h".into()), None, &env);
        let r = from_context(&ctx, 7);
        assert_eq!(r["service.name"], "svc");
        assert_eq!(r["service.instance.id"], "a1");
        assert_eq!(r["nomad.alloc_id"], "a1");
        assert_eq!(r["host.name"], "h");
        let ctx = LogContext::from_parts("svc".into(), Some("h".into()), None, &[]);
        assert_eq!(from_context(&ctx, 7)["service.instance.id"], "h-7");
    }
}
