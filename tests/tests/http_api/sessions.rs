//! Sessions over the wire: the README's walkthrough against the real
//! binary and its real clock, and conditional writes racing over many
//! connections.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use sessiond_e2e::Sessiond;
use sessiond_e2e::api::{Api, MERGE_PATCH, session_path, unknown_id};
use sessiond_e2e::http::{EXCHANGE_TIMEOUT, call, http_client};
use sessiond_e2e::time::now_ms;

#[tokio::test]
async fn the_readme_walkthrough_answers_as_documented() {
    let server = Sessiond::start(&[]);
    let api = Api::remote(&server.url());
    let before = now_ms();
    let created = api
        .create(&json!({"data": {"user": "alice", "cart": []}, "ttl_secs": 1800}))
        .await;
    created.assert_session(201);
    let id = created.id();
    assert_eq!(created.etag(), Some("\"1\""));
    assert_eq!(
        created.header("location"),
        Some(session_path(&id, "").as_str())
    );
    // The node's clock is the system's: its stamps are now.
    let created_at = created.stamp("created_at");
    assert!(
        created_at.abs_diff(before) < 600_000,
        "created_at {created_at} vs now {before}"
    );
    assert_eq!(created.stamp("updated_at"), created_at);
    assert_eq!(created.stamp("expires_at") - created_at, 1_800_000);

    api.get(&id).await.assert_session(200);
    let put = api
        .put(
            &id,
            &json!({"data": {"user": "alice", "cart": ["apple"]}}),
            Some("\"1\""),
        )
        .await;
    put.assert_session(200);
    assert_eq!(put.version(), 2);
    let patched = api
        .patch(
            &id,
            MERGE_PATCH,
            &json!({"cart": ["apple", "pear"], "coupon": null}),
            None,
        )
        .await;
    patched.assert_session(200);
    assert_eq!(
        (patched.version(), &patched.body["data"]),
        (3, &json!({"user": "alice", "cart": ["apple", "pear"]}))
    );
    let touched = api
        .post_action(&id, "touch", Some(&json!({"ttl_secs": 3600})))
        .await;
    touched.assert_session(200);
    assert_eq!(
        (touched.version(), touched.body["ttl_secs"].clone()),
        (3, json!(3600))
    );

    let rotated = api.post_action(&id, "rotate", None).await;
    rotated.assert_session(201);
    let new = rotated.id();
    assert_eq!(rotated.version(), 3, "the version is kept");
    assert_eq!(
        rotated.header("location"),
        Some(session_path(&new, "").as_str())
    );
    api.get(&id).await.assert_error(404, "not_found");

    for _ in 0..2 {
        assert_eq!(api.delete(&new).await.status, 204, "also when already gone");
    }
    api.get(&new).await.assert_error(404, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_conditional_writes_lose_no_update() {
    const WRITERS: u64 = 64;
    const ATTEMPTS: usize = 50;
    let server = Sessiond::start(&[]);
    let url = server.url();
    let (id, _) = Api::remote(&url)
        .create_session(json!({"writes": []}))
        .await;
    let deadline = Instant::now() + Duration::from_secs(120);

    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let (url, id) = (url.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            let client = http_client(EXCHANGE_TIMEOUT);
            let target = format!("{url}{}", session_path(&id, ""));
            let (mut successes, mut conflicts) = (0u64, 0u64);
            for _ in 0..ATTEMPTS {
                if successes > 0 || Instant::now() > deadline {
                    break;
                }
                let read = call(client.get(&target)).await;
                read.assert_session(200);
                let mut data = read.body["data"].clone();
                data["writes"]
                    .as_array_mut()
                    .expect("writes is an array")
                    .push(json!(writer));
                let etag = format!("\"{}\"", read.version());
                let written = call(
                    client
                        .put(&target)
                        .header("if-match", etag)
                        .json(&json!({ "data": data })),
                )
                .await;
                match written.status {
                    200 => {
                        assert_eq!(written.version(), read.version() + 1);
                        successes += 1;
                    }
                    412 => {
                        written.assert_error(412, "version_mismatch");
                        conflicts += 1;
                    }
                    other => panic!("writer {writer}: unexpected {other}: {}", written.text),
                }
            }
            (writer, successes, conflicts)
        }));
    }
    let mut successes_of = HashMap::new();
    for task in tasks {
        let (writer, successes, _conflicts) = task.await.expect("a writer panicked");
        successes_of.insert(writer, successes);
    }
    let total: u64 = successes_of.values().sum();
    assert!(total >= 1, "no write succeeded");

    let last = Api::remote(&url).get(&id).await;
    let writes: Vec<u64> = last.body["data"]["writes"]
        .as_array()
        .expect("writes is an array")
        .iter()
        .map(|value| value.as_u64().expect("writer numbers"))
        .collect();
    assert_eq!(writes.len() as u64, total, "a successful write was lost");
    assert_eq!(last.version(), 1 + total);
    for (writer, successes) in &successes_of {
        let present = writes.iter().filter(|w| *w == writer).count() as u64;
        assert_eq!(present, *successes, "writer {writer}");
    }
}

#[tokio::test]
async fn no_cache_may_keep_a_v1_answer() {
    let server = Sessiond::start(&[]);
    let api = Api::remote(&server.url());
    let created = api
        .create(&json!({"data": {"user": "alice"}, "user": "alice"}))
        .await;
    created.assert_session(201);
    let id = created.id();
    let answers = [
        ("create", created),
        ("read", api.get(&id).await),
        (
            "failed write",
            api.put(&id, &json!({"data": {}}), Some("\"9\"")).await,
        ),
        (
            "user listing",
            api.request(Method::GET, "/v1/users/alice/sessions", &[], "")
                .await,
        ),
        ("unknown session", api.get(&unknown_id()).await),
        (
            "unknown route",
            api.request(Method::GET, "/v1/nope", &[], "").await,
        ),
        (
            "method not allowed",
            api.request(Method::PUT, "/v1/sessions", &[], "").await,
        ),
    ];
    for (what, answer) in &answers {
        assert_eq!(
            answer.header("cache-control"),
            Some("no-store"),
            "{what} answered {}",
            answer.status
        );
    }
    assert_eq!(answers[2].1.status, 412);
    assert_eq!(answers[3].1.status, 200);
    assert_eq!((answers[5].1.status, answers[6].1.status), (404, 405));
}

/// A TTL too long is `invalid_ttl` however its number is written (past
/// `u64` it was `invalid_json`, so the answer hung on the spelling); a
/// fraction or a negative one is no whole number of seconds.
#[tokio::test]
async fn a_ttl_too_long_is_invalid_ttl_however_it_is_written() {
    let server = Sessiond::start(&[]);
    let api = Api::remote(&server.url());
    let json = [("content-type", "application/json")];
    for (ttl, code) in [
        ("86401", "invalid_ttl"),
        ("18446744073709551616", "invalid_ttl"),
        ("99999999999999999999", "invalid_ttl"),
        ("1e20", "invalid_ttl"),
        ("1.5", "invalid_json"),
        ("-1", "invalid_json"),
    ] {
        let body = format!(r#"{{"data":{{}},"ttl_secs":{ttl}}}"#);
        let answer = api.request(Method::POST, "/v1/sessions", &json, body).await;
        assert_eq!(
            (answer.status, answer.error_code()),
            (400, code),
            "ttl_secs {ttl}: {:?}",
            answer.body
        );
    }
}
