//! Size and memory limits of a real node: `--max-session-bytes` on data and
//! on whole bodies, `--max-memory` with both `--when-full` policies. (The
//! sweeper giving expired sessions' memory back is checked on a manual
//! clock, in the server crate's `rules` tests.)

use serde_json::{Value, json};
use sessiond_e2e::Sessiond;
use sessiond_e2e::api::{Api, MERGE_PATCH};
use sessiond_e2e::http::{EXCHANGE_TIMEOUT, call, http_client};
use sessiond_e2e::metrics::scrape;

/// Data of the same size for every `n` below 1000.
fn padded(n: usize) -> Value {
    json!({"n": format!("{n:03}"), "pad": "p".repeat(100)})
}

#[tokio::test]
async fn data_over_max_session_bytes_is_payload_too_large() {
    let server = Sessiond::start(&["--max-session-bytes", "1KiB"]);
    let api = Api::remote(&server.url());
    let big = json!("x".repeat(2048));
    api.create(&json!({"data": big}))
        .await
        .assert_error(413, "payload_too_large");

    let kept = json!({"y": "y".repeat(900)});
    let (id, _) = api.create_session(kept.clone()).await;
    api.put(&id, &json!({"data": big}), None)
        .await
        .assert_error(413, "payload_too_large");
    // Each part is small; the merged document is over 1 KiB.
    api.patch(&id, MERGE_PATCH, &json!({"more": "z".repeat(200)}), None)
        .await
        .assert_error(413, "payload_too_large");
    api.assert_stored(&id, kept, 1).await;
}

#[tokio::test]
async fn a_body_far_over_the_limit_is_payload_too_large() {
    let server = Sessiond::start(&["--max-session-bytes", "1KiB"]);
    let url = server.url();
    let api = Api::remote(&url);
    let huge = json!({"data": "x".repeat(1 << 20)});
    api.create(&huge)
        .await
        .assert_error(413, "payload_too_large");
    let (id, _) = api.create_session(json!({})).await;
    api.put(&id, &huge, None)
        .await
        .assert_error(413, "payload_too_large");
    let health = call(http_client(EXCHANGE_TIMEOUT).get(format!("{url}/healthz"))).await;
    assert_eq!(health.status, 200);
}

#[tokio::test]
async fn a_full_store_that_rejects_answers_507_and_keeps_every_session() {
    let server = Sessiond::start(&["--max-memory", "4KiB"]);
    let url = server.url();
    let api = Api::remote(&url);
    let mut kept = Vec::new();
    let mut refusal = None;
    for n in 0..200 {
        let answer = api.create(&json!({ "data": padded(n) })).await;
        match answer.status {
            201 => kept.push((answer.id(), n)),
            _ => {
                refusal = Some(answer);
                break;
            }
        }
    }
    let refusal = refusal.expect("4 KiB never filled up with 200 sessions");
    refusal.assert_error(507, "store_full");
    assert!(!kept.is_empty(), "not even one session fit");
    for (id, n) in &kept {
        let read = api.get(id).await;
        assert_eq!(read.status, 200, "session {n} was lost: {}", read.text);
        assert_eq!(read.body["data"], padded(*n));
    }
    api.create(&json!({ "data": padded(999) }))
        .await
        .assert_error(507, "store_full");
    let (last, n) = kept.last().expect("one session");
    let grown = json!({"n": "grown", "pad": "p".repeat(2000)});
    api.put(last, &json!({ "data": grown }), None)
        .await
        .assert_error(507, "store_full");
    api.assert_stored(last, padded(*n), 1).await;

    // Deleting a session makes room for one of the same size.
    let (first, _) = &kept[0];
    assert_eq!(api.delete(first).await.status, 204);
    api.create(&json!({ "data": padded(998) }))
        .await
        .assert_session(201);

    let metrics = scrape(&url).await;
    assert_eq!(
        metrics.value("sessiond_sessions", &[]),
        Some(kept.len() as f64)
    );
    assert!(
        metrics.value("sessiond_rejections_total", &[]) >= Some(3.0),
        "{metrics}"
    );
    assert_eq!(metrics.value("sessiond_evictions_total", &[]), Some(0.0));
}

#[tokio::test]
async fn a_full_store_that_evicts_keeps_accepting_and_counts_evictions() {
    let server = Sessiond::start(&["--max-memory", "4KiB", "--when-full", "evict-lru"]);
    let url = server.url();
    let api = Api::remote(&url);
    let mut ids = Vec::new();
    for n in 0..100 {
        let answer = api.create(&json!({ "data": padded(n) })).await;
        answer.assert_session(201);
        ids.push(answer.id());
    }
    let metrics = scrape(&url).await;
    let evictions = metrics
        .value("sessiond_evictions_total", &[])
        .unwrap_or(0.0);
    assert!(evictions > 0.0, "no evictions counted:\n{metrics}");
    let used = metrics
        .value("sessiond_memory_used_bytes", &[])
        .unwrap_or(f64::MAX);
    assert!(used > 0.0 && used <= 4096.0, "memory used {used}");
    let held = metrics.value("sessiond_sessions", &[]).unwrap_or(-1.0);
    assert_eq!(
        held + evictions,
        100.0,
        "every session is held or was evicted"
    );

    let mut readable = 0;
    for (n, id) in ids.iter().enumerate() {
        let read = api.get(id).await;
        match read.status {
            200 => {
                readable += 1;
                assert_eq!(read.body["data"], padded(n));
            }
            _ => read.assert_error(404, "not_found"),
        }
    }
    assert_eq!(f64::from(readable), held);
    assert_eq!(
        api.get(&ids[99]).await.status,
        200,
        "the newest session was evicted"
    );
}
