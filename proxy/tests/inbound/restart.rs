//! The app is killed and restarted mid-load, as the lifecycle would (not ready, kill, start,
//! ready; or killed first, then not ready): 2,000 GETs from a few concurrent clients all
//! succeed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::StatusCode;
use tandem_proxy::Protocol;

use crate::support::*;

const CLIENTS: usize = 4;
const PER_CLIENT: usize = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_load_has_zero_failures() {
    bounded(async {
        let up = Upstream::start().await;
        let addr = up.addr;
        let proxy = Proxy::start(addr, Protocol::Http, true, |_| {}).await;
        let done = Arc::new(AtomicUsize::new(0));
        let mut clients = tokio::task::JoinSet::new();
        for c in 0..CLIENTS {
            let client = h1_client();
            let done = done.clone();
            let url = proxy.url(&format!("/slow?ms={}", c % 2));
            clients.spawn(async move {
                let mut failures = Vec::new();
                for _ in 0..PER_CLIENT {
                    match get(&client, &url).await {
                        Ok((StatusCode::OK, _, _)) => {}
                        Ok((s, _, b)) => failures.push(format!("{s} {b:?}")),
                        Err(e) => failures.push(e.to_string()),
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                failures
            });
        }
        // Restart twice during the run: first as a planned restart (not ready, then kill),
        // then as a crash (killed, and the lifecycle notices just after).
        let mut up = Some(up);
        for (at, crash) in [(500, false), (1200, true)] {
            eventually("load to progress", || done.load(Ordering::Relaxed) >= at).await;
            if !crash {
                proxy.ready.send_replace(false);
            }
            let seen = up.take().expect("running").stop().await;
            proxy.ready.send_replace(false);
            // The restart gap: the new app starts only once every client's request is held
            // at the readiness gate (waiting on an event, not a fixed sleep that may end
            // before any request reached the hold on a loaded machine).
            eventually("every client's request to be held", || {
                proxy.metric(r#"tandem_proxy_requests_in_flight{listener="test"}"#)
                    == CLIENTS as f64
            })
            .await;
            up = Some(Upstream::start_on(addr, seen).await);
            proxy.ready.send_replace(true);
        }
        let mut failures = Vec::new();
        while let Some(r) = clients.join_next().await {
            failures.extend(r.expect("client task"));
        }
        assert_eq!(done.load(Ordering::Relaxed), CLIENTS * PER_CLIENT);
        assert!(
            failures.is_empty(),
            "{} failed: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        let up = up.expect("running");
        assert!(up.seen.hits("/slow") >= CLIENTS * PER_CLIENT);
    })
    .await;
}
