//! Reconfigure in place (a config reload): a changed listener keeps its socket, new requests
//! get the new settings while one in flight finishes on the old; a removed one drains and
//! refuses; an added one serves.

use std::time::Duration;

use http::StatusCode;
use tandem_proxy::{ListenerConfig, Protocol};

use crate::support::*;

fn listener(name: &str, upstream: std::net::SocketAddr) -> ListenerConfig {
    let mut c = ListenerConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        upstream.to_string(),
        Protocol::Http,
    );
    c.name = name.into();
    c.drain_timeout = Duration::from_secs(30);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_listener_keeps_its_socket_and_finishes_in_flight_on_the_old() {
    bounded(async {
        let client = h1_client();
        let SlowInFlight {
            up: one,
            mut proxy,
            slow,
        } = SlowInFlight::start(Protocol::Http, Duration::from_secs(30), &client, 1500).await;
        let two = Upstream::start().await;
        let addr = proxy.addr;
        let mut serving = proxy.drain_handle();

        // Same name and address, a new upstream.
        let done = serving
            .reconfigure(&[listener("test", two.addr)])
            .await
            .expect("reconfigure");
        assert_eq!(done.changed, ["test"]);
        assert!(done.added.is_empty() && done.removed.is_empty());
        assert_eq!(serving.local_addrs()[0].1, addr, "the same socket");
        let (status, _, _) = get(&h1_client(), &format!("http://{addr}/echo"))
            .await
            .expect("a new request");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            two.seen.hits("/echo"),
            1,
            "new requests go to the new upstream"
        );
        let (status, _, body) = slow.await.expect("task").expect("the in-flight GET");
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"slow done"[..]));

        // Unchanged is untouched; a removed one refuses; an added one serves.
        let done = serving
            .reconfigure(&[listener("added", one.addr)])
            .await
            .expect("reconfigure");
        assert_eq!(
            (done.added, done.removed),
            (vec!["added".to_string()], vec!["test".to_string()])
        );
        let added = serving.local_addrs()[0].1;
        let (status, _, _) = get(&h1_client(), &format!("http://{added}/echo"))
            .await
            .expect("the added listener");
        assert_eq!(status, StatusCode::OK);
        assert!(
            refuses_connections(addr).await,
            "the removed listener still accepts"
        );
        let same = serving
            .reconfigure(&[listener("added", one.addr)])
            .await
            .expect("reconfigure");
        assert_eq!(same.unchanged, ["added"]);

        // A listener that cannot be bound refuses the whole change.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut bad = listener("bad", one.addr);
        bad.listen = taken.local_addr().expect("addr");
        assert!(serving
            .reconfigure(&[listener("added", two.addr), bad])
            .await
            .is_err());
        assert_eq!(serving.local_addrs().len(), 1, "nothing changed");
        let report = serving.drain().await;
        assert_eq!(report.cut(), 0, "{report:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retired_settings_finish_only_after_their_request_in_flight() {
    bounded(async {
        let (one, two) = (Upstream::start().await, Upstream::start().await);
        let mut proxy = Proxy::start(one.addr, Protocol::Http, true, |c| {
            c.drain_timeout = Duration::from_secs(30);
        })
        .await;
        let mut serving = proxy.drain_handle();
        let url = proxy.url("/slow?ms=1500");
        let slow = tokio::spawn(async move { get(&h1_client(), &url).await });
        let seen = one.seen.clone();
        eventually("the slow request reached the first app", || {
            seen.hits("/slow") == 1
        })
        .await;
        serving
            .reconfigure(&[listener("test", two.addr)])
            .await
            .expect("reconfigure");
        let mut retired = serving.take_retired();
        assert_eq!(retired.len(), 1, "the old settings are draining");
        let drains = retired.finished().await;
        let (status, _, body) = slow.await.expect("task").expect("the in-flight GET");
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"slow done"[..]));
        assert_eq!(drains.len(), 1);
        // Resolved only once the old settings' request in flight was answered, not cut.
        assert_eq!(
            (
                drains[0].in_flight_at_start,
                drains[0].finished,
                drains[0].cut
            ),
            (1, 1, 0),
            "{drains:?}"
        );
        assert!(retired.is_empty());
        serving.keep_retired(retired);
        let report = serving.drain().await;
        assert_eq!(report.cut(), 0, "{report:?}");
    })
    .await;
}
