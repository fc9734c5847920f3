//! Requests the API refuses, and with which code: bodies that are not the
//! expected JSON, wrong media types, malformed ids and headers, unknown
//! routes and methods, and bodies that are too large or never arrive.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{Method, Request};
use serde_json::json;
use sessiond_e2e::api::{MERGE_PATCH, session_path, unknown_id};

use super::{BODY_TIMEOUT, Node};

const JSON: (&str, &str) = ("content-type", "application/json");

#[tokio::test]
async fn create_refuses_unknown_fields_and_malformed_json_as_invalid_json() {
    let node = Node::new();
    let bodies = [
        r#"{"data": {}, "extra": 1}"#,
        r#"{"data": {"#,
        r#"{"data": {}} trailing"#,
        r#"{"ttl_secs": "60"}"#,
        r#"{"ttl_secs": -1}"#,
        r#"{"ttl_secs": 1.5}"#,
        r#"{"data": "bad escape \u00"}"#,
        "not json at all",
    ];
    for body in bodies {
        node.request(Method::POST, "/v1/sessions", &[JSON], body)
            .await
            .assert_error(400, "invalid_json");
    }
    node.assert_sessions_held(0, "sessions held");
}

#[tokio::test]
async fn bodies_that_are_json_arrays_are_invalid_json() {
    let node = Node::new();
    let (id, _) = node.create_session(json!({"kept": true})).await;
    node.create(&json!([{"a": 1}, 60]))
        .await
        .assert_error(400, "invalid_json");
    node.json(Method::PUT, &session_path(&id, ""), &json!([{"a": 1}]))
        .await
        .assert_error(400, "invalid_json");
    node.post_action(&id, "touch", Some(&json!([5])))
        .await
        .assert_error(400, "invalid_json");
    let read = node.get(&id).await;
    assert_eq!(read.body["data"], json!({"kept": true}));
    assert_eq!(read.body["ttl_secs"], json!(1800));
}

#[tokio::test]
async fn create_with_a_body_that_is_not_application_json_is_unsupported_media_type() {
    let node = Node::new();
    let body = r#"{"data": {"a": 1}}"#;
    for content_type in ["text/plain", "application/xml"] {
        let headers = [("content-type", content_type)];
        node.request(Method::POST, "/v1/sessions", &headers, body)
            .await
            .assert_error(415, "unsupported_media_type");
    }
    node.request(Method::POST, "/v1/sessions", &[], body)
        .await
        .assert_error(415, "unsupported_media_type");
    for accepted in ["application/json; charset=utf-8", "Application/JSON"] {
        let headers = [("content-type", accepted)];
        let answer = node
            .request(Method::POST, "/v1/sessions", &headers, body)
            .await;
        answer.assert_session(201);
        assert_eq!(answer.body["data"], json!({"a": 1}));
    }
}

#[tokio::test]
async fn put_without_a_data_field_is_invalid_json() {
    let node = Node::new();
    let (id, _) = node.create_session(json!({"kept": true})).await;
    for body in [
        json!({}),
        json!({"ttl_secs": 60}),
        json!({"data": {}, "extra": 1}),
    ] {
        node.put(&id, &body, None)
            .await
            .assert_error(400, "invalid_json");
    }
    let path = session_path(&id, "");
    node.request(Method::PUT, &path, &[], "")
        .await
        .assert_error(400, "invalid_json");
    let text = [("content-type", "text/plain")];
    node.request(Method::PUT, &path, &text, r#"{"data": {}}"#)
        .await
        .assert_error(415, "unsupported_media_type");
    node.assert_stored(&id, json!({"kept": true}), 1).await;
}

#[tokio::test]
async fn patch_with_application_json_is_unsupported_media_type() {
    let node = Node::new();
    let (id, _) = node.create_session(json!({"n": 0})).await;
    for media_type in ["application/json", "text/plain"] {
        node.patch(&id, media_type, &json!({"n": 1}), None)
            .await
            .assert_error(415, "unsupported_media_type");
    }
    node.request(
        Method::PATCH,
        &session_path(&id, ""),
        &[("content-type", MERGE_PATCH)],
        "",
    )
    .await
    .assert_error(400, "invalid_json");
    node.assert_stored(&id, json!({"n": 0}), 1).await;
}

#[tokio::test]
async fn get_of_an_unknown_well_formed_id_is_not_found() {
    let node = Node::new();
    node.create_session(json!({})).await;
    for id in [unknown_id(), "AAAAAAAAAAAAAAAAAAAAAA".to_owned()] {
        node.get(&id).await.assert_error(404, "not_found");
    }
}

#[tokio::test]
async fn malformed_ids_are_invalid_id_on_every_session_route() {
    let node = Node::new();
    let malformed = [
        "abc",                     // too short
        "AAAAAAAAAAAAAAAAAAAAAAA", // 23 characters
        "AAAAAAAAAAAAAAAAAAAA!*",  // outside base64url
        "AAAAAAAAAAAAAAAAAAAAA=",  // padding
        "AAAAAAAAAAAAAAAAAAAAAB",  // 22 characters but not canonical
        "%C3%A9AAAAAAAAAAAAAAAAAAAA",
    ];
    for id in malformed {
        let path = session_path(id, "");
        let answers = [
            node.get(id).await,
            node.put(id, &json!({"data": {}}), None).await,
            node.patch(id, MERGE_PATCH, &json!({}), None).await,
            node.request(Method::DELETE, &path, &[], "").await,
            node.post_action(id, "touch", None).await,
            node.post_action(id, "rotate", None).await,
        ];
        for answer in answers {
            answer.assert_error(400, "invalid_id");
        }
    }
}

#[tokio::test]
async fn put_with_a_malformed_if_match_is_invalid_request() {
    let node = Node::new();
    let (id, _) = node.create_session(json!({"kept": true})).await;
    for if_match in ["W/\"1\"", "\"one\"", "\"1\", \"2\"", "\"-1\"", "\"\""] {
        node.put(&id, &json!({"data": {}}), Some(if_match))
            .await
            .assert_error(400, "invalid_request");
    }
    node.assert_stored(&id, json!({"kept": true}), 1).await;
}

#[tokio::test]
async fn a_malformed_idempotency_key_is_invalid_request_once_the_body_is_valid() {
    let node = Node::new();
    let (id, _) = node.create_session(json!({"kept": true})).await;
    let spaced = ("idempotency-key", "has space");
    // The body is checked first, as it always was.
    node.request(Method::POST, "/v1/sessions", &[JSON, spaced], "[]")
        .await
        .assert_error(400, "invalid_json");
    node.request(Method::POST, "/v1/sessions", &[JSON, spaced], "{}")
        .await
        .assert_error(400, "invalid_request");
    let path = session_path(&id, "");
    node.request(Method::PUT, &path, &[JSON, spaced], r#"{"data": 1}"#)
        .await
        .assert_error(400, "invalid_request");
    let patch = [("content-type", MERGE_PATCH), spaced];
    node.request(Method::PATCH, &path, &patch, "{}")
        .await
        .assert_error(400, "invalid_request");
    let rotate = session_path(&id, "/rotate");
    let long = "k".repeat(256);
    node.request(Method::POST, &rotate, &[("idempotency-key", &long)], "")
        .await
        .assert_error(400, "invalid_request");
    node.assert_stored(&id, json!({"kept": true}), 1).await;
    node.assert_sessions_held(1, "refused writes store nothing");
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_are_405() {
    let node = Node::new();
    let (id, _) = node.create_session(json!({})).await;
    for path in [
        "/nope".to_owned(),
        "/v1/nope".to_owned(),
        session_path(&id, "/nope"),
    ] {
        node.request(Method::GET, &path, &[], "")
            .await
            .assert_error(404, "unknown_route");
    }
    let wrong_methods = [
        (Method::PUT, "/v1/sessions".to_owned()),
        (Method::DELETE, "/v1/sessions".to_owned()),
        (Method::GET, "/v1/sessions".to_owned()),
        (Method::GET, session_path(&id, "/touch")),
        (Method::DELETE, session_path(&id, "/rotate")),
        (Method::POST, session_path(&id, "")),
        (Method::POST, "/healthz".to_owned()),
    ];
    for (method, path) in wrong_methods {
        node.request(method, &path, &[], "")
            .await
            .assert_error(405, "method_not_allowed");
    }
    assert_eq!(node.get(&id).await.version(), 1, "nothing was written");
}

/// A request whose body never comes: its head declares `length` bytes.
fn stalled(method: Method, path: &str, media: &str, length: u64) -> Request<Body> {
    let never = futures_util::stream::pending::<Result<Bytes, Infallible>>();
    Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", media)
        .header("content-length", length)
        .body(Body::from_stream(never))
        .expect("a request")
}

/// A body declared over the limit is answered 413 without waiting for it:
/// one of up to 8 MiB is read and dropped first (clients that send it all
/// before reading then get the answer), but one that pauses for a second
/// is answered then; a longer one is answered at once.
#[tokio::test(start_paused = true)]
async fn a_declared_content_length_over_the_limit_is_413_without_waiting_for_the_body() {
    let node = Node::new();
    let (id, _) = node.create_session(json!({})).await;
    let over = (1 << 20) + 4096 + 1;
    let drained = [
        stalled(Method::POST, "/v1/sessions", "application/json", over),
        stalled(
            Method::PUT,
            &session_path(&id, ""),
            "application/json",
            over,
        ),
        stalled(Method::PATCH, &session_path(&id, ""), MERGE_PATCH, over),
        // A touch carries no data: its envelope alone is the limit.
        stalled(
            Method::POST,
            &session_path(&id, "/touch"),
            "application/json",
            4097,
        ),
    ];
    for request in drained {
        let started = tokio::time::Instant::now();
        node.call(request)
            .await
            .assert_error(413, "payload_too_large");
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(1),
            "the drain's pause"
        );
    }
    let started = tokio::time::Instant::now();
    let far_over = stalled(Method::POST, "/v1/sessions", "application/json", 9 << 20);
    node.call(far_over)
        .await
        .assert_error(413, "payload_too_large");
    assert_eq!(started.elapsed(), Duration::ZERO, "answered at once");
}

#[tokio::test(start_paused = true)]
async fn a_body_that_never_arrives_is_408_at_the_body_timeout() {
    let node = Node::new();
    let started = tokio::time::Instant::now();
    let request = stalled(Method::POST, "/v1/sessions", "application/json", 100);
    node.call(request)
        .await
        .assert_error(408, "request_timeout");
    assert_eq!(started.elapsed(), BODY_TIMEOUT);
    node.assert_sessions_held(0, "nothing was created");
}
