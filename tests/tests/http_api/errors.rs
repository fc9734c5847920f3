//! Garbage on the wire: bodies, paths and headers no API client sends,
//! heads over the cap and bytes that are not HTTP. Each gets a 4xx, none a
//! 5xx, and the node keeps serving.

use reqwest::Method;
use reqwest::header::HeaderValue;
use serde_json::json;
use sessiond_e2e::Sessiond;
use sessiond_e2e::api::{Api, MERGE_PATCH, session_path};
use sessiond_e2e::http::{EXCHANGE_TIMEOUT, call, http_client};
use sessiond_e2e::metrics::scrape;
use sessiond_e2e::raw_http::exchange;

#[tokio::test]
async fn garbage_requests_get_4xx_and_the_server_keeps_serving() {
    let server = Sessiond::start(&[]);
    let url = server.url();
    let api = Api::remote(&url);
    let client = http_client(EXCHANGE_TIMEOUT);
    let (id, _) = api.create_session(json!({"a": 1})).await;
    let sessions = format!("{url}/v1/sessions");
    let session = |suffix: &str| format!("{url}{}", session_path(&id, suffix));
    let binary: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let huge = "x".repeat(64 * 1024);
    let invalid_utf8 = HeaderValue::from_bytes(b"\"\xff\xfe\"").expect("obs-text header");

    let requests = [
        client
            .post(&sessions)
            .header("content-type", "application/json")
            .body(binary.clone()),
        client
            .put(session(""))
            .header("content-type", "application/json")
            .body(binary.clone()),
        client
            .patch(session(""))
            .header("content-type", MERGE_PATCH)
            .body(binary.clone()),
        client
            .post(session("/touch"))
            .header("content-type", "application/json")
            .body(binary.clone()),
        client.post(&sessions).body(binary),
        client
            .patch(session(""))
            .header("content-type", MERGE_PATCH)
            .body(format!("{}{}", "[".repeat(100_000), "]".repeat(100_000))),
        client.get(format!(
            "{url}/v1/sessions/%FF%FE%FD%FC%FB%FA%F9%F8%F7%F6%F5"
        )),
        client.get(format!(
            "{url}/v1/sessions/%00%00%00%00%00%00%00%00%00%00%00"
        )),
        client.get(format!("{url}{}", session_path(&"A".repeat(16 * 1024), ""))),
        client
            .put(session(""))
            .header("if-match", "x".repeat(16 * 1024))
            .json(&json!({"data": {}})),
        client
            .put(session(""))
            .header("if-match", invalid_utf8)
            .json(&json!({"data": {}})),
        client
            .post(&sessions)
            .header("content-type", "x".repeat(16 * 1024))
            .body("{}"),
        client.get(format!("{url}/{}", "y".repeat(16 * 1024))),
    ];
    for (n, request) in requests.into_iter().enumerate() {
        let answer = call(request).await;
        assert!(
            (400..500).contains(&answer.status),
            "garbage request {n} got {}: {}",
            answer.status,
            answer.text
        );
        assert!(
            !answer.error_code().is_empty(),
            "garbage request {n}: no error code in {}",
            answer.text
        );
    }

    // Heads over --http-max-head-bytes (64 KiB): hyper answers 431 before
    // any handler runs (with no body) and closes the connection.
    let over_head_limit = [
        client
            .put(session(""))
            .header("if-match", huge.as_str())
            .json(&json!({"data": {}})),
        client
            .post(&sessions)
            .header("content-type", huge.as_str())
            .body("{}"),
    ];
    for request in over_head_limit {
        assert_eq!(call(request).await.status, 431);
    }

    // Bytes no HTTP client would send: the HTTP layer refuses them with 400.
    let raw: [&[u8]; 3] = [
        b"GET /v1/sessions/\xff\xfe\xfd HTTP/1.1\r\nHost: sessiond\r\n\r\n",
        b"\x00\x01\x02GARBAGE\xff\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: sessiond\r\nBad Header\xff\r\n\r\n",
    ];
    for bytes in raw {
        let status = exchange(server.http, bytes).await.status;
        assert!((400..500).contains(&status), "raw garbage got {status}");
    }

    assert_eq!(call(client.get(format!("{url}/healthz"))).await.status, 200);
    let read = api.get(&id).await;
    read.assert_session(200);
    assert_eq!(
        read.body["data"],
        json!({"a": 1}),
        "garbage changed nothing"
    );
    let metrics = scrape(&url).await;
    let statuses = metrics.label_values("sessiond_http_requests_total", "status");
    assert!(statuses.contains(&"400"), "{metrics}");
    assert!(
        statuses.iter().all(|status| !status.starts_with('5')),
        "a 5xx was answered: {statuses:?}"
    );
}

#[tokio::test]
async fn bodies_the_node_would_misread_are_refused_by_their_headers() {
    let server = Sessiond::start(&[]);
    let api = Api::remote(&server.url());
    let (id, _) = api.create_session(json!({"a": 1})).await;
    let put = session_path(&id, "");
    let touch = session_path(&id, "/touch");
    let refused = [
        // Compressed bytes the node would take for bad (or, as here, any) JSON.
        (
            Method::PUT,
            put.as_str(),
            [
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
            r#"{"data": {"b": 2}}"#,
            415,
            "unsupported_media_type",
        ),
        // `null` is JSON, so it needs JSON's media type like any JSON body.
        (
            Method::POST,
            touch.as_str(),
            [("content-type", "text/plain"), ("x-note", "null body")],
            "null",
            415,
            "unsupported_media_type",
        ),
        // A sign is no version.
        (
            Method::PUT,
            put.as_str(),
            [("content-type", "application/json"), ("if-match", "+1")],
            r#"{"data": {"b": 2}}"#,
            400,
            "invalid_request",
        ),
    ];
    for (method, path, headers, body, status, code) in refused {
        let answer = api.request(method, path, &headers, body).await;
        answer.assert_error(status, code);
    }
    // A coding or a media type on a second line counts as much as the
    // first (only the first was read: gzip after identity passed).
    for headers in [
        [
            ("content-type", "application/json"),
            ("content-encoding", "identity"),
            ("content-encoding", "gzip"),
        ],
        [
            ("content-type", "application/json"),
            ("content-type", "text/plain"),
            ("x-note", "two types"),
        ],
    ] {
        let answer = api
            .request(Method::PUT, &put, &headers, r#"{"data": {"b": 2}}"#)
            .await;
        answer.assert_error(415, "unsupported_media_type");
    }
    // A list's empty elements name no coding (RFC 9110, 5.6.1): an empty
    // header was 415 "Content-Encoding (empty)".
    for coding in ["", " , identity ,"] {
        let headers = [
            ("content-type", "application/json"),
            ("content-encoding", coding),
        ];
        let answer = api
            .request(Method::PUT, &put, &headers, r#"{"data": {"b": 3}}"#)
            .await;
        assert_eq!(answer.status, 200, "{coding:?}: {}", answer.text);
    }
    // A patch of another type is told the one the route takes (RFC 5789).
    let json_patch = api
        .request(
            Method::PATCH,
            &put,
            &[("content-type", "application/json")],
            r#"{"b": 2}"#,
        )
        .await;
    json_patch.assert_error(415, "unsupported_media_type");
    assert_eq!(
        json_patch.header("accept-patch"),
        Some(MERGE_PATCH),
        "{json_patch:?}"
    );
    // No body at all means the defaults, whatever type a tool labels it.
    let empty_form = [("content-type", "application/x-www-form-urlencoded")];
    api.request(Method::POST, &touch, &empty_form, "")
        .await
        .assert_session(200);
    api.assert_stored(&id, json!({"b": 3}), 3).await;
}

#[tokio::test]
async fn a_condition_or_key_sent_on_two_lines_is_refused_as_a_list_is() {
    let server = Sessiond::start(&[]);
    let api = Api::remote(&server.url());
    let (id, _) = api.create_session(json!({"a": 1})).await;
    let put = session_path(&id, "");
    // Two lines are one list (RFC 9110, 5.3): the first alone would match.
    let two_conditions = [
        ("content-type", "application/json"),
        ("if-match", "\"1\""),
        ("if-match", "\"7\""),
    ];
    let two_keys = [
        ("content-type", "application/json"),
        ("idempotency-key", "order-1"),
        ("idempotency-key", "order-2"),
    ];
    let answers = [
        api.request(Method::PUT, &put, &two_conditions, r#"{"data": {"b": 2}}"#)
            .await,
        api.request(Method::PUT, &put, &two_keys, r#"{"data": {"b": 3}}"#)
            .await,
        api.request(Method::POST, "/v1/sessions", &two_keys, r#"{"data": {}}"#)
            .await,
    ];
    for answer in &answers {
        answer.assert_error(400, "invalid_request");
        assert!(
            answer.text.contains("more than one"),
            "the message names the fault: {answer:?}"
        );
    }
    api.assert_stored(&id, json!({"a": 1}), 1).await;
}

/// Every API route that takes no query parameter refuses one with 400
/// `invalid_request` naming it, as the routes with parameters refuse an
/// unknown one (they ignored it: a listing answered 200, a write was
/// applied); the operational routes still ignore a query.
#[tokio::test]
async fn a_query_parameter_no_api_route_takes_is_refused() {
    let server = Sessiond::start(&[]);
    let api = Api::remote(&server.url());
    let (id, _) = api.create_session(json!({"a": 1})).await;
    let json_body = [("content-type", "application/json")];
    let patch_body = [("content-type", MERGE_PATCH)];
    let session = session_path(&id, "?bogus=1");
    let touch = session_path(&id, "/touch?bogus=1");
    let rotate = session_path(&id, "/rotate?bogus=1");
    let routes = [
        (Method::GET, "/v1/users/bob/sessions?bogus=1", &[][..], ""),
        (Method::POST, "/v1/sessions?bogus=1", &json_body[..], "{}"),
        (Method::GET, &session, &[][..], ""),
        (
            Method::PUT,
            &session,
            &json_body[..],
            r#"{"data": {"b": 2}}"#,
        ),
        (Method::PATCH, &session, &patch_body[..], r#"{"b": 2}"#),
        (Method::POST, &touch, &json_body[..], "{}"),
        (Method::POST, &rotate, &json_body[..], "{}"),
        (Method::DELETE, &session, &[][..], ""),
    ];
    for (method, path, headers, body) in routes {
        let answer = api.request(method.clone(), path, headers, body).await;
        assert_eq!(answer.status, 400, "{method} {path}: {}", answer.text);
        answer.assert_error(400, "invalid_request");
        assert!(
            answer.text.contains("bogus"),
            "{method} {path}: the message names the parameter: {answer:?}"
        );
    }
    api.assert_stored(&id, json!({"a": 1}), 1).await;
    let health = http_client(EXCHANGE_TIMEOUT).get(format!("{}/healthz?probe=1", server.url()));
    assert_eq!(call(health).await.status, 200);
}

/// A body in a transfer coding besides `chunked` (`gzip, chunked`: hyper
/// undoes only the chunking) is refused by its header, as a
/// `Content-Encoding` is: the compressed bytes were read as JSON and
/// refused as `invalid_json`.
#[tokio::test]
async fn a_body_in_a_transfer_coding_besides_chunked_is_refused_by_its_header() {
    let server = Sessiond::start(&[]);
    let chunk = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03";
    let mut request = format!(
        "POST /v1/sessions HTTP/1.1\r\nHost: s\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: gzip, chunked\r\n\r\n{:x}\r\n",
        chunk.len()
    )
    .into_bytes();
    request.extend_from_slice(chunk);
    request.extend_from_slice(b"\r\n0\r\n\r\n");
    let answer = exchange(server.http, &request).await;
    assert_eq!(
        (answer.status, answer.error_code()),
        (415, "unsupported_media_type".to_owned()),
        "{}",
        answer.text()
    );
    assert!(
        answer.text().contains("Transfer-Encoding gzip"),
        "{}",
        answer.text()
    );
}
