//! End-to-end tests of the Rust client against one real `sessiond` node:
//! every operation, every typed error the server can answer with, the
//! interplay with the HTTP API, pipelining over one connection and
//! `update()` under contention.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sessiond_client::{Client, Error, SessionId};
use sessiond_e2e::metrics::scrape;
use sessiond_e2e::process::{freeze, signal};
use sessiond_e2e::proxy::SilencingProxy;
use sessiond_e2e::{Sessiond, build, builder_for, client_for};
use sessiond_proto::ErrorCode;
use tokio::net::{TcpListener, TcpStream};

/// Bound of any single step that talks to the server.
const STEP: Duration = Duration::from_secs(30);

/// Runs `future`, failing the test if it takes longer than [`STEP`].
async fn bounded<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(STEP, future)
        .await
        .expect("the step did not finish in time")
}

/// A typed session payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Cart {
    user: Option<String>,
    items: Vec<String>,
    visits: u32,
}

fn cart(user: Option<&str>, items: &[&str], visits: u32) -> Cart {
    Cart {
        user: user.map(str::to_owned),
        items: items.iter().map(|item| (*item).to_owned()).collect(),
        visits,
    }
}

/// A counter for the contention test.
#[derive(Debug, Serialize, Deserialize)]
struct Counter {
    counter: u64,
}

fn http() -> reqwest::Client {
    sessiond_e2e::http_client(STEP)
}

fn session_url(node: &Sessiond, id: &SessionId) -> String {
    format!("{}/v1/sessions/{id}", node.url())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_get_put_with_typed_data() {
    let node = Sessiond::start(&["--default-ttl", "10m"]);
    let client = client_for(&[&node]).await;

    let first = cart(None, &["apple"], 1);
    let created = bounded(client.create(&first, None)).await.unwrap();
    assert_eq!(created.version, 1);
    assert_eq!(
        created.ttl,
        Duration::from_secs(600),
        "the server's default ttl"
    );
    assert_eq!(created.created_at, created.updated_at);
    assert_eq!(
        created.expires_at,
        created.created_at + Duration::from_secs(600)
    );

    let explicit = bounded(client.create(&first, Some(Duration::from_secs(90))))
        .await
        .unwrap();
    assert_eq!(explicit.ttl, Duration::from_secs(90));
    assert_eq!(
        explicit.expires_at,
        explicit.created_at + Duration::from_secs(90)
    );
    assert_ne!(explicit.id, created.id);

    // A sub-second ttl is rounded up to one second, never sent as zero.
    let short = bounded(client.create(&first, Some(Duration::from_millis(300))))
        .await
        .unwrap();
    assert_eq!(short.ttl, Duration::from_secs(1));

    let read = bounded(client.get::<Cart>(&created.id)).await.unwrap();
    assert_eq!(read.data, first);
    assert_eq!(read.id(), created.id);
    assert_eq!(read.version(), 1);
    assert_eq!(read.info.created_at, created.created_at);

    let second = cart(Some("bob"), &["apple", "pear"], 2);
    let put = bounded(client.put(&created.id, &second, None))
        .await
        .unwrap();
    assert_eq!(put.version, 2);
    assert_eq!(put.id, created.id);
    assert_eq!(
        put.created_at, created.created_at,
        "a write keeps created_at"
    );
    assert_eq!(
        put.ttl,
        Duration::from_secs(600),
        "a put without ttl keeps it"
    );
    let third = cart(Some("bob"), &[], 3);
    let put =
        bounded(client.put_with_ttl(&created.id, &third, Some(Duration::from_secs(120)), None))
            .await
            .unwrap();
    assert_eq!(put.version, 3);
    assert_eq!(put.ttl, Duration::from_secs(120));

    let read = bounded(client.get::<Cart>(&created.id)).await.unwrap();
    assert_eq!(read.data, third);
    assert_eq!(read.version(), 3);
    assert_eq!(read.info.ttl, Duration::from_secs(120));

    // The same data read as an untyped value, and as a type it is not.
    let raw = bounded(client.get::<Value>(&created.id)).await.unwrap();
    assert_eq!(raw.data, json!({"user": "bob", "items": [], "visits": 3}));
    let wrong = bounded(client.get::<Vec<u64>>(&created.id))
        .await
        .unwrap_err();
    assert!(matches!(wrong, Error::Serde(_)), "{wrong:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_put_reports_the_current_version() {
    let node = Sessiond::start(&[]);
    let client = client_for(&[&node]).await;
    let id = bounded(client.create(&cart(None, &[], 0), None))
        .await
        .unwrap()
        .id;

    let v2 = bounded(client.put(&id, &cart(None, &["a"], 1), Some(1)))
        .await
        .unwrap();
    assert_eq!(v2.version, 2);

    let stale = bounded(client.put(&id, &cart(None, &["lost"], 9), Some(1)))
        .await
        .unwrap_err();
    assert!(
        matches!(stale, Error::Conflict { current_version: 2 }),
        "{stale:?}"
    );
    let ahead = bounded(client.put(&id, &cart(None, &["lost"], 9), Some(7)))
        .await
        .unwrap_err();
    assert!(
        matches!(ahead, Error::Conflict { current_version: 2 }),
        "{ahead:?}"
    );

    let read = bounded(client.get::<Cart>(&id)).await.unwrap();
    assert_eq!(
        read.data,
        cart(None, &["a"], 1),
        "a losing write changed nothing"
    );
    assert_eq!(read.version(), 2);

    let v3 = bounded(client.put(&id, &cart(None, &["a", "b"], 2), Some(2)))
        .await
        .unwrap();
    assert_eq!(v3.version, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_merges_like_rfc_7386() {
    let node = Sessiond::start(&[]);
    let client = client_for(&[&node]).await;
    let original = json!({"a": 1, "b": {"c": 2, "d": 3}, "keep": "yes"});
    let id = bounded(client.create(&original, None)).await.unwrap().id;

    let patched = bounded(client.patch(&id, &json!({"a": null, "b": {"c": 5}, "e": [1]}), None))
        .await
        .unwrap();
    assert_eq!(patched.version, 2);
    let read = bounded(client.get::<Value>(&id)).await.unwrap();
    assert_eq!(
        read.data,
        json!({"b": {"c": 5, "d": 3}, "e": [1], "keep": "yes"})
    );

    let stale = bounded(client.patch(&id, &json!({"x": 1}), Some(1)))
        .await
        .unwrap_err();
    assert!(
        matches!(stale, Error::Conflict { current_version: 2 }),
        "{stale:?}"
    );

    let v3 = bounded(client.patch(&id, &json!({"e": null}), Some(2)))
        .await
        .unwrap();
    assert_eq!(v3.version, 3);
    let read = bounded(client.get::<Value>(&id)).await.unwrap();
    assert_eq!(read.data, json!({"b": {"c": 5, "d": 3}, "keep": "yes"}));
    assert_eq!(read.version(), 3);

    // A patch that is not an object replaces the whole document.
    bounded(client.patch(&id, &json!([1, 2]), None))
        .await
        .unwrap();
    assert_eq!(
        bounded(client.get::<Value>(&id)).await.unwrap().data,
        json!([1, 2])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_applies_the_closure_and_returns_the_new_version() {
    let node = Sessiond::start(&[]);
    let client = client_for(&[&node]).await;
    let id = bounded(client.create(&cart(None, &["apple"], 1), None))
        .await
        .unwrap()
        .id;

    let mut calls = 0;
    let updated = bounded(client.update(&id, |cart: &mut Cart| {
        calls += 1;
        cart.items.push("pear".into());
        cart.visits += 1;
    }))
    .await
    .unwrap();
    assert_eq!(calls, 1, "no conflict, so the closure ran once");
    assert_eq!(updated.version(), 2);
    assert_eq!(updated.id(), id);
    assert_eq!(updated.data, cart(None, &["apple", "pear"], 2));
    let read = bounded(client.get::<Cart>(&id)).await.unwrap();
    assert_eq!(read.data, updated.data);
    assert_eq!(read.version(), 2);

    let missing = SessionId::random();
    let err = bounded(client.update(&missing, |cart: &mut Cart| cart.visits += 1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn touch_changes_the_ttl_but_not_the_version() {
    let node = Sessiond::start(&["--max-ttl", "1h"]);
    let client = client_for(&[&node]).await;
    let created = bounded(client.create(&cart(None, &[], 0), Some(Duration::from_secs(60))))
        .await
        .unwrap();
    let id = created.id;
    bounded(client.put(&id, &cart(None, &["a"], 1), None))
        .await
        .unwrap();

    let touched = bounded(client.touch(&id, Some(Duration::from_secs(300))))
        .await
        .unwrap();
    assert_eq!(touched.version, 2, "touch is not a write");
    assert_eq!(touched.ttl, Duration::from_secs(300));
    assert!(touched.expires_at >= touched.updated_at + Duration::from_secs(300));

    let kept = bounded(client.touch(&id, None)).await.unwrap();
    assert_eq!(kept.version, 2);
    assert_eq!(
        kept.ttl,
        Duration::from_secs(300),
        "touch without ttl keeps it"
    );

    let read = bounded(client.get::<Cart>(&id)).await.unwrap();
    assert_eq!(read.version(), 2);
    assert_eq!(read.info.ttl, Duration::from_secs(300));
    assert_eq!(read.data, cart(None, &["a"], 1));

    let too_long = bounded(client.touch(&id, Some(Duration::from_secs(7200))))
        .await
        .unwrap_err();
    assert_invalid_ttl(&too_long);
    assert_eq!(
        bounded(client.get::<Cart>(&id)).await.unwrap().info.ttl,
        Duration::from_secs(300),
        "a refused touch changed nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_moves_the_data_to_a_new_id() {
    let node = Sessiond::start(&[]);
    let client = client_for(&[&node]).await;
    let created = bounded(client.create(&cart(None, &["apple"], 1), None))
        .await
        .unwrap();
    let old = created.id;
    bounded(client.put(&old, &cart(Some("alice"), &["apple"], 2), None))
        .await
        .unwrap();

    let rotated = bounded(client.rotate(&old)).await.unwrap();
    assert_ne!(rotated.id, old);
    assert_eq!(rotated.version, 2, "rotate keeps the version");
    assert_eq!(rotated.created_at, created.created_at);

    let read = bounded(client.get::<Cart>(&rotated.id)).await.unwrap();
    assert_eq!(read.data, cart(Some("alice"), &["apple"], 2));
    assert_eq!(read.version(), 2);

    let gone = bounded(client.get::<Cart>(&old)).await.unwrap_err();
    assert!(matches!(gone, Error::NotFound), "{gone:?}");
    let again = bounded(client.rotate(&old)).await.unwrap_err();
    assert!(matches!(again, Error::NotFound), "{again:?}");
    let stats = bounded(client.stats(&node.tcp.to_string())).await.unwrap();
    assert_eq!(stats.sessions, 1, "rotate moves, it does not copy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_is_idempotent() {
    let node = Sessiond::start(&[]);
    let client = client_for(&[&node]).await;
    let id = bounded(client.create(&cart(None, &[], 0), None))
        .await
        .unwrap()
        .id;
    let other = bounded(client.create(&cart(None, &["other"], 0), None))
        .await
        .unwrap()
        .id;

    bounded(client.delete(&id)).await.unwrap();
    let err = bounded(client.get::<Cart>(&id)).await.unwrap_err();
    assert!(matches!(err, Error::NotFound), "{err:?}");
    bounded(client.delete(&id)).await.unwrap();
    bounded(client.delete(&SessionId::random())).await.unwrap();

    let err = bounded(client.put(&id, &cart(None, &[], 1), None))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::NotFound),
        "a deleted session is not resurrected: {err:?}"
    );
    assert_eq!(
        bounded(client.get::<Cart>(&other))
            .await
            .unwrap()
            .data
            .items,
        ["other"]
    );
    let stats = bounded(client.stats(&node.tcp.to_string())).await.unwrap();
    assert_eq!(stats.sessions, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_all_and_stats() {
    let node = Sessiond::start(&["--max-memory", "64MiB"]);
    let client = client_for(&[&node]).await;
    let address = node.tcp.to_string();
    assert_eq!(client.nodes(), vec![address.clone()]);

    let pings = bounded(client.ping_all()).await;
    assert_eq!(pings.len(), 1);
    assert_eq!(pings[0].0, address);
    assert!(pings[0].1.is_ok(), "{pings:?}");

    let empty = bounded(client.stats(&address)).await.unwrap();
    assert_eq!(empty.sessions, 0);
    assert_eq!(empty.bytes_used, 0);
    assert_eq!(empty.bytes_limit, Some(64 << 20));

    let mut ids = Vec::new();
    for visits in 0..5 {
        ids.push(
            bounded(client.create(&cart(None, &[], visits), None))
                .await
                .unwrap()
                .id,
        );
    }
    let five = bounded(client.stats(&address)).await.unwrap();
    assert_eq!(five.sessions, 5);
    assert!(five.bytes_used > 0);
    bounded(client.delete(&ids[0])).await.unwrap();
    bounded(client.delete(&ids[1])).await.unwrap();
    let three = bounded(client.stats(&address)).await.unwrap();
    assert_eq!(three.sessions, 3);
    assert!(three.bytes_used < five.bytes_used);
    assert_eq!(
        (three.expirations, three.evictions, three.rejections),
        (0, 0, 0)
    );

    let err = bounded(client.stats("127.0.0.1:1")).await.unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_are_not_found() {
    let node = Sessiond::start(&[]);
    let client = client_for(&[&node]).await;
    let id = SessionId::random();
    let errors = [
        bounded(client.get::<Value>(&id))
            .await
            .map(drop)
            .unwrap_err(),
        bounded(client.put(&id, &json!({}), None))
            .await
            .map(drop)
            .unwrap_err(),
        bounded(client.put(&id, &json!({}), Some(1)))
            .await
            .map(drop)
            .unwrap_err(),
        bounded(client.patch(&id, &json!({"a": 1}), None))
            .await
            .map(drop)
            .unwrap_err(),
        bounded(client.touch(&id, None))
            .await
            .map(drop)
            .unwrap_err(),
        bounded(client.rotate(&id)).await.map(drop).unwrap_err(),
    ];
    for err in errors {
        assert!(matches!(err, Error::NotFound), "{err:?}");
    }
    let stats = bounded(client.stats(&node.tcp.to_string())).await.unwrap();
    assert_eq!(
        stats.sessions, 0,
        "no operation on an unknown id created one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_over_max_session_bytes_is_too_large() {
    let node = Sessiond::start(&["--max-session-bytes", "1KiB"]);
    let client = client_for(&[&node]).await;
    let big = "x".repeat(4096);

    let err = bounded(client.create(&big, None)).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge(_)), "{err:?}");

    // Exactly at the limit is fine: a JSON string of 1022 chars + 2 quotes.
    let fits = "y".repeat(1022);
    let id = bounded(client.create(&fits, None)).await.unwrap().id;
    let err = bounded(client.put(&id, &big, None)).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge(_)), "{err:?}");
    let err = bounded(client.put(&id, &format!("{fits}z"), None))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TooLarge(_)), "one byte over: {err:?}");

    let small = bounded(client.create(&json!({"k": "v"}), None))
        .await
        .unwrap()
        .id;
    let err = bounded(client.patch(&small, &json!({"big": big}), None))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::TooLarge(_)),
        "a patch that grows too big: {err:?}"
    );

    // Far over the server's frame size: refused by the client before sending.
    let huge = "z".repeat(200 << 10);
    let err = bounded(client.put(&id, &huge, None)).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge(_)), "{err:?}");

    let read = bounded(client.get::<String>(&id)).await.unwrap();
    assert_eq!(read.data, fits, "refused writes changed nothing");
    assert_eq!(read.version(), 1);
    assert_eq!(
        bounded(client.get::<Value>(&small)).await.unwrap().data,
        json!({"k": "v"})
    );
    let stats = bounded(client.stats(&node.tcp.to_string())).await.unwrap();
    assert_eq!(stats.sessions, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_over_max_session_bytes_is_too_large() {
    // The part of the test above that the codec bug does not reach: one
    // large frame, first on its connection, fits the server's read buffer.
    let node = Sessiond::start(&["--max-session-bytes", "1KiB"]);
    let client = client_for(&[&node]).await;
    let err = bounded(client.create(&"x".repeat(4096), None))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TooLarge(_)), "{err:?}");
    // Far over the server's frame size: refused by the client, never sent.
    let err = bounded(client.create(&"z".repeat(200 << 10), None))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TooLarge(_)), "{err:?}");
    let created = bounded(client.create(&"y".repeat(1022), None))
        .await
        .unwrap();
    assert_eq!(created.version, 1);
    let stats = bounded(client.stats(&node.tcp.to_string())).await.unwrap();
    assert_eq!(stats.sessions, 1, "refused creates stored nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_over_max_ttl_is_invalid() {
    let node = Sessiond::start(&["--max-ttl", "1h"]);
    let client = client_for(&[&node]).await;
    let over = Some(Duration::from_secs(3601));

    let err = bounded(client.create(&json!({}), over)).await.unwrap_err();
    assert_invalid_ttl(&err);
    let err = bounded(client.create(&json!({}), Some(Duration::ZERO)))
        .await
        .unwrap_err();
    assert_invalid_ttl(&err);

    let at_max = bounded(client.create(&json!({}), Some(Duration::from_secs(3600))))
        .await
        .unwrap();
    assert_eq!(at_max.ttl, Duration::from_secs(3600));
    let err = bounded(client.put_with_ttl(&at_max.id, &json!({"a": 1}), over, None))
        .await
        .unwrap_err();
    assert_invalid_ttl(&err);
    let read = bounded(client.get::<Value>(&at_max.id)).await.unwrap();
    assert_eq!((read.version(), read.data), (1, json!({})));

    let stats = bounded(client.stats(&node.tcp.to_string())).await.unwrap();
    assert_eq!(stats.sessions, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_token_is_required_and_checked() {
    let node = Sessiond::start(&["--auth-token", "s3cret-token"]);

    let none = bounded(builder_for(&[&node]).build()).await.unwrap_err();
    assert!(matches!(none, Error::Unauthorized(_)), "{none:?}");
    let wrong = bounded(builder_for(&[&node]).auth_token("s3cret-tokeN").build())
        .await
        .unwrap_err();
    assert!(matches!(wrong, Error::Unauthorized(_)), "{wrong:?}");
    let prefix = bounded(builder_for(&[&node]).auth_token("s3cret").build())
        .await
        .unwrap_err();
    assert!(matches!(prefix, Error::Unauthorized(_)), "{prefix:?}");

    let client = build(builder_for(&[&node]).auth_token("s3cret-token")).await;
    let id = bounded(client.create(&cart(None, &["x"], 1), None))
        .await
        .unwrap()
        .id;
    assert_eq!(
        bounded(client.get::<Cart>(&id)).await.unwrap().data.items,
        ["x"]
    );
}

/// A TCP proxy in front of `upstream` that counts the connections it accepts.
async fn counting_proxy(upstream: std::net::SocketAddr) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (address, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_build_stops_reconnecting() {
    let node = Sessiond::start(&["--auth-token", "s3cret-token"]);
    let (proxy, accepted) = counting_proxy(node.tcp).await;

    let err = bounded(Client::builder().nodes([proxy]).auth_token("wrong").build())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized(_)), "{err:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    // The caller got an error and no client: nothing should keep connecting.
    // (Probes back off 50 ms, 100 ms, ... so 3 s would see about 5 more.)
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "connections after build() failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_store_rejects_creates_with_store_full() {
    let node = Sessiond::start(&["--max-memory", "8KiB"]);
    let client = client_for(&[&node]).await;
    let address = node.tcp.to_string();

    let mut ids = Vec::new();
    let full = loop {
        assert!(ids.len() < 1000, "8 KiB took over 1000 sessions");
        match bounded(client.create(&json!({"n": ids.len()}), None)).await {
            Ok(info) => ids.push(info.id),
            Err(err) => break err,
        }
    };
    assert!(matches!(full, Error::StoreFull(_)), "{full:?}");
    assert!(ids.len() >= 10, "only {} sessions fit in 8 KiB", ids.len());

    let stats = bounded(client.stats(&address)).await.unwrap();
    assert_eq!(stats.sessions, ids.len() as u64);
    assert_eq!(stats.bytes_limit, Some(8 << 10));
    assert!(stats.bytes_used <= 8 << 10, "{stats:?}");
    assert!(stats.rejections >= 1, "{stats:?}");
    assert_eq!(
        stats.evictions, 0,
        "the default policy rejects, it does not evict"
    );

    // Every stored session survived; growing one is refused too.
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(
            bounded(client.get::<Value>(id)).await.unwrap().data,
            json!({"n": n})
        );
    }
    let err = bounded(client.put(&ids[0], &"x".repeat(4096), None))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::StoreFull(_)), "{err:?}");

    // Deleting frees room for a new session.
    bounded(client.delete(&ids[0])).await.unwrap();
    bounded(client.create(&json!({"n": 0}), None))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_and_http_api_see_the_same_sessions() {
    let node = Sessiond::start(&[]);
    let client = client_for(&[&node]).await;
    let http = http();

    // Written by the client, read over HTTP.
    let id = bounded(client.create(&cart(Some("ann"), &["tea"], 1), None))
        .await
        .unwrap()
        .id;
    bounded(client.put(&id, &cart(Some("ann"), &["tea", "cake"], 2), None))
        .await
        .unwrap();
    let answer = bounded(http.get(session_url(&node, &id)).send())
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let body: Value = bounded(answer.json()).await.unwrap();
    assert_eq!(body["id"], json!(id.to_string()));
    assert_eq!(body["version"], json!(2));
    assert_eq!(
        body["data"],
        json!({"user": "ann", "items": ["tea", "cake"], "visits": 2})
    );

    // Written over HTTP, read by the client.
    let answer = bounded(
        http.put(session_url(&node, &id))
            .header("if-match", "\"2\"")
            .json(&json!({"data": {"user": "ann", "items": [], "visits": 3}}))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(answer.status(), 200);
    let read = bounded(client.get::<Cart>(&id)).await.unwrap();
    assert_eq!(read.data, cart(Some("ann"), &[], 3));
    assert_eq!(read.version(), 3);

    let answer = bounded(
        http.post(format!("{}/v1/sessions", node.url()))
            .json(&json!({"data": {"user": null, "items": ["from-http"], "visits": 7}}))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(answer.status(), 201);
    let body: Value = bounded(answer.json()).await.unwrap();
    let http_id: SessionId = body["id"].as_str().unwrap().parse().unwrap();
    let read = bounded(client.get::<Cart>(&http_id)).await.unwrap();
    assert_eq!(read.data, cart(None, &["from-http"], 7));
    assert_eq!(read.version(), 1);

    // A client delete is seen over HTTP, and a conflict has the same version.
    let err = bounded(client.put(&id, &cart(None, &[], 0), Some(2)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Conflict { current_version: 3 }),
        "{err:?}"
    );
    bounded(client.delete(&id)).await.unwrap();
    let answer = bounded(http.get(session_url(&node, &id)).send())
        .await
        .unwrap();
    assert_eq!(answer.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_over_one_connection() {
    let node = Sessiond::start(&[]);
    let client = build(builder_for(&[&node]).timeout(Duration::from_secs(20))).await;
    const TASKS: usize = 1000;

    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..TASKS {
        let client = client.clone();
        tasks.spawn(async move {
            let data = json!({"n": n, "tag": format!("task-{n}")});
            let created = client.create(&data, None).await?;
            let read = client.get::<Value>(&created.id).await?;
            assert_eq!(read.data, data, "task {n} read another task's data");
            let again = json!({"n": n, "again": true});
            let put = client.put(&created.id, &again, Some(1)).await?;
            assert_eq!(put.version, 2, "task {n}");
            let read = client.get::<Value>(&created.id).await?;
            assert_eq!((read.version(), read.data), (2, again), "task {n}");
            Ok::<_, Error>((n, created.id))
        });
    }
    let mut ids = HashSet::new();
    let mut done = HashSet::new();
    let joined = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(result) = tasks.join_next().await {
            let (n, id) = result.expect("a task panicked").expect("a request failed");
            assert!(done.insert(n));
            assert!(ids.insert(id), "an id was issued twice");
        }
    })
    .await;
    assert!(
        joined.is_ok(),
        "only {} of {TASKS} tasks finished",
        done.len()
    );
    assert_eq!(done.len(), TASKS);

    let stats = bounded(client.stats(&node.tcp.to_string())).await.unwrap();
    assert_eq!(stats.sessions, TASKS as u64);

    // All of it went over a single connection.
    let metrics = scrape(&node.url()).await;
    assert_eq!(
        metrics.value("sessiond_tcp_connections", &[]),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_serves_thousands_of_sequential_requests() {
    // No concurrency at all: once ~8 KiB of answers went through the
    // client's read buffer, a response straddles its end and is read in two
    // parts (today the connection dies after about 130 gets).
    let node = Sessiond::start(&[]);
    let client = client_for(&[&node]).await;
    let id = bounded(client.create(&json!({"n": 1}), None))
        .await
        .unwrap()
        .id;
    for i in 0..2000 {
        let read = bounded(client.get::<Value>(&id))
            .await
            .unwrap_or_else(|err| panic!("get {i} failed: {err:?}"));
        assert_eq!(read.data, json!({"n": 1}));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_lose_no_increment() {
    let node = Sessiond::start(&[]);
    let client = client_for(&[&node]).await;
    let id = bounded(client.create(&Counter { counter: 0 }, None))
        .await
        .unwrap()
        .id;
    const TASKS: u64 = 16;
    const INCREMENTS: u64 = 50;

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..TASKS {
        let client = client.clone();
        tasks.spawn(async move {
            let mut last_version = 0;
            for _ in 0..INCREMENTS {
                let session = client
                    .update(&id, |counter: &mut Counter| counter.counter += 1)
                    .await?;
                assert!(session.version() > last_version, "versions only grow");
                last_version = session.version();
            }
            Ok::<_, Error>(())
        });
    }
    let joined = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(result) = tasks.join_next().await {
            result.expect("a task panicked").expect("an update failed");
        }
    })
    .await;
    assert!(joined.is_ok(), "the updates did not finish in time");

    let read = bounded(client.get::<Counter>(&id)).await.unwrap();
    assert_eq!(read.data.counter, TASKS * INCREMENTS);
    assert_eq!(read.version(), TASKS * INCREMENTS + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_is_reported_in_the_future() {
    let node = Sessiond::start(&[]);
    let client = client_for(&[&node]).await;
    let before = SystemTime::now();
    let info = bounded(client.create(&json!({}), Some(Duration::from_secs(600))))
        .await
        .unwrap();
    // Loose bounds: the server's clock is this machine's clock.
    assert!(info.expires_at > before + Duration::from_secs(500));
    assert!(info.expires_at < before + Duration::from_secs(700));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reassembles_a_response_split_across_reads() {
    use sessiond_e2e::raw::{frame, read_message};
    use sessiond_proto::wire::{
        ClientFrame, NodeStats, Outcome, PROTOCOL_VERSION, Response, ServerFrame, Welcome,
    };
    use tokio::io::AsyncWriteExt;

    // A stand-in node that answers its one request in two TCP writes.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let stats = NodeStats {
        sessions: 42,
        bytes_used: 4242,
        ..NodeStats::default()
    };
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.set_nodelay(true).unwrap();
        let hello = read_message::<ClientFrame, _>(&mut stream, STEP).await;
        assert!(matches!(hello, Some(ClientFrame::Hello(_))), "{hello:?}");
        let welcome = ServerFrame::Welcome(Welcome {
            protocol: PROTOCOL_VERSION,
            server_version: "fake".into(),
            shared_sessions: false,
            max_frame_bytes: 1 << 20,
            max_ttl_secs: 86_400,
            write_behind: false,
        });
        stream.write_all(&frame(&welcome)).await.unwrap();
        let Some(ClientFrame::Request(request)) = read_message(&mut stream, STEP).await else {
            panic!("expected a request");
        };
        let response = frame(&ServerFrame::Response(Response {
            id: request.id,
            outcome: Outcome::Stats(stats),
        }));
        stream.write_all(&response[..4]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        stream.write_all(&response[4..]).await.unwrap();
        // Hold the connection until the client is done.
        let _ = read_message::<ClientFrame, _>(&mut stream, STEP).await;
    });

    let client = build(Client::builder().nodes([address.clone()])).await;
    let answer = bounded(client.stats(&address)).await;
    drop(client);
    assert_eq!(answer.unwrap(), stats);
    bounded(server).await.unwrap();
}

/// Asserts that `err` is the server's "invalid TTL" refusal.
fn assert_invalid_ttl(err: &Error) {
    assert!(
        matches!(
            err,
            Error::Invalid {
                code: ErrorCode::InvalidTtl,
                ..
            }
        ),
        "{err:?}"
    );
}

/// A connection keeps one timer for all its callers: a short call queued
/// behind a long one (an event-log read that may wait 10 s) still times
/// out at its own deadline while the node is frozen, the long one keeps
/// waiting, and the connection answers again once the node resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_call_times_out_on_time_behind_a_long_one() {
    let node = Sessiond::start(&[]);
    let client = build(builder_for(&[&node]).timeout(Duration::from_millis(300))).await;
    let id = bounded(client.create(&json!({"n": 1}), None))
        .await
        .expect("create")
        .id;
    let follower = client.clone();
    let long = tokio::spawn(async move {
        let mut events = Box::pin(follower.events(Some("now".into())));
        events.next().await
    });
    // Let the event read reach the node, and the create's deadline pass:
    // the connection's timer then waits for the event read's.
    tokio::time::sleep(Duration::from_secs(1)).await;
    freeze(node.pid());
    let started = std::time::Instant::now();
    let short = bounded(client.get::<Value>(&id)).await;
    let waited = started.elapsed();
    let long_still_waiting = !long.is_finished();
    signal(node.pid(), "CONT");
    assert!(
        matches!(short, Err(Error::Timeout(_))),
        "a read of a frozen node ended with {short:?}"
    );
    // The long call's deadline is 10.3 s away: the short one did not wait
    // for it.
    assert!(
        waited < Duration::from_secs(5),
        "the 300 ms read waited {waited:?}"
    );
    assert!(
        long_still_waiting,
        "the event read ended while the node was frozen"
    );
    let read = bounded(client.get::<Value>(&id))
        .await
        .expect("a read after the node resumed");
    assert_eq!(read.data, json!({"n": 1}));
    long.abort();
}

/// A node that stops reading (frozen) while large writes fill the
/// connection: a request that cannot even be written still ends by its
/// deadline (as "not sent", so it may go to another node), and the
/// connection works again once the node resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_stuck_behind_a_full_connection_ends_by_its_deadline() {
    let node = Sessiond::start(&[]);
    let client = build(
        builder_for(&[&node])
            .timeout(Duration::from_millis(300))
            .fall(100),
    )
    .await;
    let id = bounded(client.create(&json!({"n": 1}), None))
        .await
        .expect("create")
        .id;
    freeze(node.pid());
    // 300 puts of 32 KiB: far more than the socket buffers of a node that
    // does not read, and than the client's 256 KiB write batch.
    let big = json!({ "blob": "x".repeat(32 * 1024) });
    let mut puts = tokio::task::JoinSet::new();
    for _ in 0..300 {
        let (client, id, big) = (client.clone(), id, big.clone());
        puts.spawn(async move { client.put(&id, &big, None).await });
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(5), client.get::<Value>(&id)).await;
    let waited = started.elapsed();
    signal(node.pid(), "CONT");
    let read = read.unwrap_or_else(|_| panic!("a read behind a full connection waited {waited:?}"));
    assert!(
        matches!(read, Err(Error::Unavailable(_) | Error::Timeout(_))),
        "a read of a frozen node ended with {read:?}"
    );
    puts.abort_all();
    let again = bounded(async {
        loop {
            match client.get::<Value>(&id).await {
                Ok(read) => break read,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await;
    // Puts the node had in its socket are applied once it resumes.
    assert!(
        again.data == json!({"n": 1}) || again.data == big,
        "the data is neither the first nor a put's"
    );
}

/// A call that fails at once (its only node is down) still hands the
/// runtime back now and then: an app retrying it in a loop does not starve
/// its other tasks, among them the client's probe that brings the node
/// back. On a one-thread runtime, a task spawned before the loop must run
/// within it.
#[tokio::test(flavor = "current_thread")]
async fn calls_failing_at_once_let_other_tasks_run() {
    const CALLS: usize = 100_000;
    let mut node = Sessiond::start(&[]);
    let client = client_for(&[&node]).await;
    let id = bounded(client.create(&json!({}), None))
        .await
        .expect("create")
        .id;
    node.kill();
    for _ in 0..50 {
        if client.nodes_up().iter().all(|(_, up)| !up) {
            break;
        }
        assert!(bounded(client.get::<Value>(&id)).await.is_err());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!client.nodes_up()[0].1, "the killed node is down");
    let ran = Arc::new(AtomicUsize::new(0));
    tokio::spawn({
        let ran = ran.clone();
        async move { ran.store(1, Ordering::SeqCst) }
    });
    let mut calls = 0;
    while ran.load(Ordering::SeqCst) == 0 && calls < CALLS {
        let failed = client.get::<Value>(&id).await;
        assert!(matches!(failed, Err(Error::Unavailable(_))), "{failed:?}");
        calls += 1;
    }
    assert_eq!(
        ran.load(Ordering::SeqCst),
        1,
        "a spawned task did not run during {calls} calls that failed at once"
    );
}

/// A node, a proxy to its binary port, a client of it through the proxy,
/// and a session `{"n": 0}` made through them.
async fn proxied_session() -> (Sessiond, SilencingProxy, Client, SessionId) {
    let node = Sessiond::start(&[]);
    let proxy = SilencingProxy::start(node.tcp.port()).await;
    let client = build(Client::builder().nodes([format!("127.0.0.1:{}", proxy.port())])).await;
    let id = client
        .create(&json!({"n": 0}), None)
        .await
        .expect("create")
        .id;
    (node, proxy, client, id)
}

/// A write whose connection drops after the request went through (a reset,
/// a middlebox) is sent again to its node on a new connection and answered
/// from the session's write log: applied once, and the node stays in
/// rotation (a dropped connection is not a dead node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_connection_dropped_is_sent_again_on_a_new_one() {
    let (_node, proxy, client, id) = proxied_session().await;
    proxy.cut_open_connections_at_next_answer();
    let put = client
        .put(&id, &json!({"n": 1}), None)
        .await
        .expect("the put, sent again on a new connection");
    assert_eq!(put.version, 2, "applied once");
    assert!(proxy.accepted() >= 2, "a new connection was opened");
    assert!(
        client.nodes_up().iter().all(|(_, up)| *up),
        "{:?}",
        client.nodes_up()
    );
    let read = client.get::<serde_json::Value>(&id).await.expect("read");
    assert_eq!((read.version(), read.data), (2, json!({"n": 1})));
}

/// Callers that queue behind a connect to a node that stopped answering
/// fail with it, instead of each trying a connect of its own in turn (the
/// last would wait the connect timeout once per caller ahead of it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_behind_a_failed_connect_do_not_each_connect_again() {
    let node = Sessiond::start(&["--idle-timeout", "300ms"]);
    let proxy = SilencingProxy::start(node.tcp.port()).await;
    let client = build(
        Client::builder()
            .nodes([format!("127.0.0.1:{}", proxy.port())])
            .timeout(Duration::from_millis(400))
            .connect_timeout(Duration::from_millis(400)),
    )
    .await;
    let id = client
        .create(&json!({"n": 0}), None)
        .await
        .expect("create")
        .id;
    // The node closes the idle connection; then it stops answering (the
    // kernel still accepts connections to it).
    tokio::time::sleep(Duration::from_millis(900)).await;
    freeze(node.pid());
    let before = proxy.accepted();
    let reads =
        futures_util::future::join_all((0..20).map(|_| client.get::<serde_json::Value>(&id))).await;
    signal(node.pid(), "CONT");
    assert!(reads.iter().all(Result::is_err), "{reads:?}");
    let connects = proxy.accepted() - before;
    assert!(
        (1..=2).contains(&connects),
        "{connects} connects for 20 callers: one, and maybe the node's probe"
    );
}

/// A write whose frame would be over the server's limit only once its
/// user name and fields are counted is refused by the client as
/// `TooLarge` and never sent: the server would end the shared connection
/// for it, and the call would end `Indeterminate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_limit_with_its_user_name_is_too_large_not_sent() {
    // Frames of at most 1 KiB + 64 KiB = 66,560 bytes.
    let node = Sessiond::start(&["--max-session-bytes", "1KiB"]);
    let client = client_for(&[&node]).await;
    let user = "u".repeat(256);
    // Within the limit by the data alone (and its allowance for the
    // request's other fields), over it with the user name.
    let data = json!({ "pad": "x".repeat(66_560 - 256 - 20) });
    let refused = client.create_for_user(&data, None, &user).await;
    assert!(matches!(refused, Err(Error::TooLarge(_))), "{refused:?}");
    assert!(
        client.nodes_up().iter().all(|(_, up)| *up),
        "{:?}",
        client.nodes_up()
    );
    let made = client
        .create_for_user(&json!({"n": 1}), None, &user)
        .await
        .expect("the connection still serves");
    assert_eq!(made.version, 1);
}

/// A write a node read but had not started when it shut down is known not
/// to be applied: the node's farewell says so, and the client reports the
/// node unavailable rather than a write of unknown fate. Here the node
/// runs one request at a time and an event long-poll holds it; the write
/// waits behind it. Before the farewell the client saw the connection
/// close with the write unanswered and ended `Indeterminate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_a_shutting_down_node_never_started_is_not_indeterminate() {
    let node = Sessiond::start(&["--max-in-flight", "1"]);
    let client = client_for(&[&node]).await;
    let id = client
        .create(&json!({ "n": 0 }), None)
        .await
        .expect("create")
        .id;
    let mut events = Box::pin(client.events(Some("now".into())));
    let follower = tokio::spawn(async move { events.next().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let write = tokio::spawn({
        let client = client.clone();
        async move { client.put(&id, &json!({ "n": 1 }), Some(1)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!write.is_finished(), "the write waits behind the long-poll");
    signal(node.pid(), "TERM");
    let written = tokio::time::timeout(Duration::from_secs(20), write)
        .await
        .expect("the write ends")
        .expect("the write's task");
    assert!(matches!(written, Err(Error::Unavailable(_))), "{written:?}");
    follower.abort();
}

/// Many writes waiting on one connection when the node says goodbye: none
/// ends `Indeterminate`. The client woke its callers before it marked the
/// connection closed, so a woken caller could send again into the dying
/// connection, where its write was dropped unsent and taken for a lost
/// answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_waiting_when_a_node_says_goodbye_all_end_unavailable() {
    let node = Sessiond::start(&["--max-in-flight", "1"]);
    let client = client_for(&[&node]).await;
    let mut ids = Vec::new();
    for n in 0..256 {
        let made = bounded(client.create(&json!({ "n": n }), None)).await;
        ids.push(made.expect("create").id);
    }
    let mut events = Box::pin(client.events(Some("now".into())));
    let follower = tokio::spawn(async move { events.next().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let writes: Vec<_> = ids
        .into_iter()
        .map(|id| {
            let client = client.clone();
            tokio::spawn(async move { client.put(&id, &json!({ "n": -1 }), Some(1)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(node.pid(), "TERM");
    for write in writes {
        let written = bounded(write).await.expect("the write's task");
        assert!(matches!(written, Err(Error::Unavailable(_))), "{written:?}");
    }
    follower.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_over_the_clients_frame_limit_fails_its_call_alone() {
    let node = Sessiond::start(&[]);
    let (proxy, accepted) = counting_proxy(node.tcp).await;
    let writer = client_for(&[&node]).await;
    let big = bounded(writer.create(&json!({"blob": "x".repeat(64 << 10)}), None))
        .await
        .unwrap()
        .id;
    let small = bounded(writer.create(&json!({"n": 0}), None))
        .await
        .unwrap()
        .id;
    let client = build(Client::builder().nodes([proxy]).max_frame_bytes(16 << 10)).await;

    // The oversized answer comes in the middle of others on the one
    // shared connection.
    let calls = (0..40).map(|n| {
        let (client, id) = (&client, if n == 20 { big } else { small });
        async move { (n, client.get::<Value>(&id).await) }
    });
    let answers = bounded(futures_util::future::join_all(calls)).await;
    for (n, answer) in answers {
        match (n, answer) {
            (20, Err(Error::TooLarge(message))) => {
                assert!(message.contains("max_frame_bytes"), "{message}");
            }
            (20, other) => panic!("the oversized answer gave {other:?}"),
            (_, Ok(session)) => assert_eq!(session.data, json!({"n": 0})),
            (n, Err(err)) => panic!("call {n} failed: {err:?}"),
        }
    }
    let updated = bounded(client.put(&small, &json!({"n": 1}), None)).await;
    assert_eq!(updated.unwrap().version, 2);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the connection was opened again"
    );
}

/// A client with no time limit (`Duration::MAX`) follows events and takes
/// a TTL of `Duration::MAX`: the limit plus an events read's wait, and a
/// TTL's seconds rounded up, used to overflow (a panic in the caller).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_time_limit_follows_events_and_takes_any_ttl() {
    let node = Sessiond::start(&[]);
    let client = build(builder_for(&[&node]).timeout(Duration::MAX)).await;
    let created = client
        .create(&json!({ "n": 1 }), None)
        .await
        .expect("create");
    let mut events = Box::pin(client.events(None));
    let first = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("an event within 10 s")
        .expect("the stream goes on")
        .expect("an event");
    assert_eq!(first.id, created.id, "{first:?}");
    let endless = client.create(&json!({ "n": 2 }), Some(Duration::MAX)).await;
    assert!(
        matches!(&endless, Err(Error::Invalid { .. })),
        "a TTL past the server's limit is refused as invalid: {endless:?}"
    );
}

/// A read whose connection drops after the request went through is asked
/// again on a new connection, as a write is: a call safe to repeat, on a
/// node that is well, does not fail for a broken connection (with a
/// single node and no Redis it had no other attempt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_connection_dropped_is_asked_again_on_a_new_one() {
    let (_node, proxy, client, id) = proxied_session().await;
    proxy.cut_open_connections_at_next_answer();
    let read = client
        .get::<serde_json::Value>(&id)
        .await
        .expect("the read, asked again on a new connection");
    assert_eq!((read.version(), read.data), (1, json!({"n": 0})));
    assert!(proxy.accepted() >= 2, "a new connection was opened");
    proxy.cut_open_connections_at_next_answer();
    let touched = client.touch(&id, None).await;
    assert!(touched.is_ok(), "the touch, asked again: {touched:?}");
}
