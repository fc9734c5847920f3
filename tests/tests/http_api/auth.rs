//! `--auth-token` on the wire: what needs the bearer token and what does
//! not.

use serde_json::json;
use sessiond_e2e::Sessiond;
use sessiond_e2e::api::session_path;
use sessiond_e2e::http::{EXCHANGE_TIMEOUT, call, http_client};

use super::assert_sessions_held;

#[tokio::test]
async fn a_bearer_token_guards_v1_but_not_health_or_metrics() {
    let server = Sessiond::start(&["--auth-token", "s3cret-token"]);
    let url = server.url();
    let sessions = format!("{url}/v1/sessions");
    let client = http_client(EXCHANGE_TIMEOUT);
    let body = json!({"data": {"a": 1}});

    let missing = call(client.post(&sessions).json(&body)).await;
    missing.assert_error(401, "unauthorized");
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    for wrong in [
        "Bearer wrong",
        "Bearer s3cret-token-and-more",
        "Basic czNjcmV0",
        "s3cret-token",
    ] {
        let answer = call(
            client
                .post(&sessions)
                .header("authorization", wrong)
                .json(&body),
        )
        .await;
        answer.assert_error(401, "unauthorized");
        assert_eq!(answer.header("www-authenticate"), Some("Bearer"));
        // One that is not a bearer token is told so, not that none came.
        let told = if wrong.starts_with("Bearer") {
            "the bearer token is wrong"
        } else {
            "must be Bearer <token>"
        };
        assert!(answer.text.contains(told), "{wrong}: {}", answer.text);
    }

    let created = call(
        client
            .post(&sessions)
            .bearer_auth("s3cret-token")
            .json(&body),
    )
    .await;
    created.assert_session(201);
    let session = format!("{url}{}", session_path(&created.id(), ""));
    call(client.get(&session))
        .await
        .assert_error(401, "unauthorized");
    call(client.delete(&session))
        .await
        .assert_error(401, "unauthorized");
    let read = call(client.get(&session).bearer_auth("s3cret-token")).await;
    read.assert_session(200);
    assert_eq!(read.body["data"], json!({"a": 1}));

    for open in ["/healthz", "/readyz", "/metrics"] {
        let answer = call(client.get(format!("{url}{open}"))).await;
        assert_eq!(answer.status, 200, "{open} needs no token: {}", answer.text);
    }
    assert_sessions_held(&url, 1.0, "401s store nothing").await;
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let server = Sessiond::start(&["--auth-token", "s3cret-token"]);
    let client = http_client(EXCHANGE_TIMEOUT);
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let answer = call(
            client
                .post(format!("{}/v1/sessions", server.url()))
                .header("authorization", format!("{scheme} s3cret-token"))
                .json(&json!({})),
        )
        .await;
        assert_eq!(answer.status, 201, "scheme {scheme:?}: {}", answer.text);
    }
}

/// Two `Authorization` lines are refused as a list, which the header is
/// not: the first one decided, so a right token before a wrong one passed
/// and the same two the other way round did not.
#[tokio::test]
async fn two_authorization_lines_are_refused_whatever_their_order() {
    let server = Sessiond::start(&["--auth-token", "s3cret-token"]);
    let client = http_client(EXCHANGE_TIMEOUT);
    for lines in [
        ["Bearer s3cret-token", "Bearer wrong"],
        ["Bearer wrong", "Bearer s3cret-token"],
        ["Bearer s3cret-token", "Bearer s3cret-token"],
    ] {
        let answer = call(
            client
                .post(format!("{}/v1/sessions", server.url()))
                .header("authorization", lines[0])
                .header("authorization", lines[1])
                .json(&json!({})),
        )
        .await;
        answer.assert_error(400, "invalid_request");
        assert!(
            answer.text.contains("Authorization must be sent once"),
            "{lines:?}: {}",
            answer.text
        );
    }
    assert_sessions_held(&server.url(), 0.0, "refused requests store nothing").await;
}
