//! What each session route does with a well-formed request: bodies,
//! versions, ETags, Location, If-Match, merge patches, deletes, touches
//! and rotations.

use std::time::Duration;

use serde_json::json;
use sessiond_e2e::api::{MERGE_PATCH, unknown_id};
use sessiond_proto::SessionId;
use sessiond_proto::http::SessionBody;

use super::{Node, START, START_MS};

#[tokio::test]
async fn create_answers_201_with_the_session_its_etag_and_location() {
    let node = Node::new();
    let data = json!({
        "user": {"id": 42, "name": "Zoë 🚀"},
        "roles": ["admin", "dev"],
        "flags": {"beta": true, "none": null},
        "score": 1.5
    });
    let answer = node.create(&json!({"data": data, "ttl_secs": 120})).await;
    answer.assert_session(201);

    let id = answer.id();
    assert_eq!(id.len(), 22, "id {id:?}");
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "id {id:?} is not base64url"
    );
    assert_eq!(
        id.parse::<SessionId>().map(|parsed| parsed.to_string()),
        Ok(id.clone())
    );
    assert_eq!(answer.body["version"], json!(1));
    assert_eq!(answer.body["data"], data);
    assert_eq!(answer.body["ttl_secs"], json!(120));
    assert_eq!(answer.etag(), Some("\"1\""));
    assert_eq!(
        answer.header("location"),
        Some(format!("/v1/sessions/{id}").as_str())
    );
    assert_eq!(answer.body["created_at"], json!(START));
    assert_eq!(
        answer.body["updated_at"],
        json!(START),
        "a new session was last written when created"
    );
    assert_eq!(
        answer.stamp("expires_at"),
        START_MS + 120_000,
        "expires_at is now + ttl"
    );

    let read = node.get(&id).await;
    read.assert_session(200);
    assert_eq!(read.body["data"], data);
}

#[tokio::test]
async fn a_session_answer_is_exactly_a_session_body_with_the_data_last() {
    let node = Node::new();
    let answer = node
        .create(&json!({"data": {"n": 1, "list": [1, 2.5, "x"]}}))
        .await;
    answer.assert_session(201);
    let body: SessionBody = serde_json::from_str(&answer.text)
        .unwrap_or_else(|err| panic!("not a SessionBody ({err}): {}", answer.text));
    let round_trip = serde_json::to_value(&body).expect("a SessionBody serializes");
    assert_eq!(round_trip, answer.body, "no field more, none fewer");
    let keys: Vec<&str> = ["id", "version", "created_at", "updated_at", "expires_at"]
        .into_iter()
        .chain(["ttl_secs", "data"])
        .collect();
    let positions: Vec<usize> = keys
        .iter()
        .map(|key| {
            answer
                .text
                .find(&format!("\"{key}\":"))
                .unwrap_or_else(|| panic!("no {key} in {}", answer.text))
        })
        .collect();
    assert!(
        positions.windows(2).all(|pair| pair[0] < pair[1]),
        "fields in the README's order: {}",
        answer.text
    );
}

#[tokio::test]
async fn create_without_data_stores_an_empty_object_with_the_default_ttl() {
    let node = Node::new();
    let no_body = node
        .request(axum::http::Method::POST, "/v1/sessions", &[], "")
        .await;
    let empty_object = node.create(&json!({})).await;
    let null_data = node.create(&json!({"data": null})).await;
    for answer in [no_body, empty_object, null_data] {
        answer.assert_session(201);
        assert_eq!(answer.body["data"], json!({}), "{}", answer.text);
        assert_eq!(answer.body["ttl_secs"], json!(1800), "{}", answer.text);
        assert_eq!(
            answer.stamp("expires_at") - answer.stamp("updated_at"),
            1_800_000
        );
    }
}

#[tokio::test]
async fn get_answers_200_with_the_session_and_its_etag() {
    let node = Node::new();
    let (id, created) = node.create_session(json!({"cart": [1, 2, 3]})).await;
    node.advance(Duration::from_secs(5));
    let answer = node.get(&id).await;
    answer.assert_session(200);
    assert_eq!(answer.etag(), Some("\"1\""));
    assert_eq!(
        answer.header("location"),
        None,
        "only creations have a Location"
    );
    for field in [
        "id",
        "version",
        "data",
        "created_at",
        "updated_at",
        "ttl_secs",
    ] {
        assert_eq!(answer.body[field], created[field], "field {field}");
    }
    assert_eq!(
        answer.stamp("expires_at"),
        START_MS + 5_000 + 1_800_000,
        "a read pushes the expiry to now + ttl"
    );
}

#[tokio::test]
async fn put_replaces_the_data_whole_and_bumps_the_version() {
    let node = Node::new();
    let (id, created) = node.create_session(json!({"a": 1, "b": 2})).await;
    node.advance(Duration::from_secs(1));
    let answer = node.put(&id, &json!({"data": {"c": 3}}), None).await;
    answer.assert_session(200);
    assert_eq!(answer.body["version"], json!(2));
    assert_eq!(answer.etag(), Some("\"2\""));
    assert_eq!(
        answer.body["data"],
        json!({"c": 3}),
        "PUT replaces, it does not merge"
    );
    assert_eq!(answer.body["created_at"], created["created_at"]);
    assert_eq!(answer.stamp("updated_at"), START_MS + 1_000);
    assert_eq!(
        answer.body["ttl_secs"], created["ttl_secs"],
        "the TTL is kept"
    );

    let with_ttl = node
        .put(&id, &json!({"data": [true], "ttl_secs": 60}), None)
        .await;
    with_ttl.assert_session(200);
    assert_eq!(with_ttl.body["version"], json!(3));
    assert_eq!(with_ttl.body["ttl_secs"], json!(60));
    node.put(&id, &json!({"data": "no", "ttl_secs": 0}), None)
        .await
        .assert_error(400, "invalid_ttl");

    let read = node.get(&id).await;
    read.assert_session(200);
    assert_eq!(read.body["data"], json!([true]));
    assert_eq!(read.etag(), Some("\"3\""));
}

#[tokio::test]
async fn put_with_a_stale_if_match_is_version_mismatch_and_changes_nothing() {
    let node = Node::new();
    let (id, _) = node.create_session(json!({"step": 0})).await;

    let first = node
        .put(&id, &json!({"data": {"step": 1}}), Some("\"1\""))
        .await;
    first.assert_session(200);
    assert_eq!(first.version(), 2);

    let stale = node
        .put(&id, &json!({"data": {"step": 99}}), Some("\"1\""))
        .await;
    stale.assert_error(412, "version_mismatch");
    assert_eq!(stale.body["error"]["current_version"], json!(2));
    assert_eq!(
        stale.etag(),
        Some("\"2\""),
        "a 412 carries the current ETag"
    );

    let unquoted = node
        .put(&id, &json!({"data": {"step": 2}}), Some("2"))
        .await;
    unquoted.assert_session(200);
    assert_eq!(unquoted.version(), 3);
    let any = node
        .put(&id, &json!({"data": {"step": 3}}), Some("*"))
        .await;
    any.assert_session(200);
    assert_eq!(any.version(), 4);

    node.assert_stored(&id, json!({"step": 3}), 4).await;
}

#[tokio::test]
async fn put_patch_touch_and_rotate_of_an_unknown_id_are_not_found_and_create_nothing() {
    let node = Node::new();
    let id = unknown_id();
    node.put(&id, &json!({"data": {"a": 1}}), None)
        .await
        .assert_error(404, "not_found");
    node.put(&id, &json!({"data": {"a": 1}}), Some("\"1\""))
        .await
        .assert_error(404, "not_found");
    node.patch(&id, MERGE_PATCH, &json!({"a": 1}), None)
        .await
        .assert_error(404, "not_found");
    node.post_action(&id, "touch", None)
        .await
        .assert_error(404, "not_found");
    node.post_action(&id, "rotate", None)
        .await
        .assert_error(404, "not_found");
    node.get(&id).await.assert_error(404, "not_found");
    node.assert_sessions_held(0, "sessions held");
}

#[tokio::test]
async fn merge_patch_removes_null_keys_and_merges_nested_objects() {
    let node = Node::new();
    let (id, _) = node
        .create_session(
            json!({"a": 1, "b": {"c": 2, "d": 3, "gone": 0}, "list": [1, 2], "keep": "yes"}),
        )
        .await;
    let answer = node
        .patch(
            &id,
            MERGE_PATCH,
            &json!({"a": null, "b": {"c": 5, "gone": null, "e": {"f": 1}}, "list": [3], "new": true}),
            None,
        )
        .await;
    answer.assert_session(200);
    let merged =
        json!({"b": {"c": 5, "d": 3, "e": {"f": 1}}, "list": [3], "keep": "yes", "new": true});
    assert_eq!(answer.body["data"], merged);
    assert_eq!(answer.version(), 2);
    assert_eq!(answer.etag(), Some("\"2\""));

    // A patch that is not an object replaces the whole document.
    let replaced = node.patch(&id, MERGE_PATCH, &json!(["whole"]), None).await;
    replaced.assert_session(200);
    assert_eq!(replaced.body["data"], json!(["whole"]));
    assert_eq!(replaced.version(), 3);
    assert_eq!(node.get(&id).await.body["data"], json!(["whole"]));
}

#[tokio::test]
async fn merge_patch_honours_if_match() {
    let node = Node::new();
    let (id, _) = node.create_session(json!({"n": 0})).await;
    let first = node
        .patch(&id, MERGE_PATCH, &json!({"n": 1}), Some("\"1\""))
        .await;
    first.assert_session(200);
    assert_eq!(first.version(), 2);

    let stale = node
        .patch(&id, MERGE_PATCH, &json!({"n": 99}), Some("\"1\""))
        .await;
    stale.assert_error(412, "version_mismatch");
    assert_eq!(stale.body["error"]["current_version"], json!(2));
    assert_eq!(stale.etag(), Some("\"2\""));

    node.patch(&id, MERGE_PATCH, &json!({"n": 98}), Some("W/\"2\""))
        .await
        .assert_error(400, "invalid_request");
    node.assert_stored(&id, json!({"n": 1}), 2).await;
}

#[tokio::test]
async fn data_that_a_write_accepted_can_be_merge_patched_later() {
    let node = Node::new();
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let json = [("content-type", "application/json")];
    for data in [deep.as_str(), r#""\ud800""#] {
        let body = format!(r#"{{"data": {data}}}"#);
        let answer = node
            .request(axum::http::Method::POST, "/v1/sessions", &json, body)
            .await;
        if answer.status == 400 {
            // Refusing such data up front is as good a fix.
            answer.assert_error(400, "invalid_json");
            continue;
        }
        assert_eq!(answer.status, 201, "{}", answer.text);
        let location = answer.header("location").unwrap_or("");
        let id = location.rsplit('/').next().unwrap_or("");
        // RFC 7386: an object patch of a non-object replaces it with the patch.
        let patched = node.patch(id, MERGE_PATCH, &json!({"k": 1}), None).await;
        patched.assert_session(200);
        assert_eq!(patched.body["data"], json!({"k": 1}));
    }
}

#[tokio::test]
async fn delete_answers_204_twice_and_the_session_is_gone() {
    let node = Node::new();
    let (id, _) = node.create_session(json!({"a": 1})).await;
    let (other, _) = node.create_session(json!({"b": 2})).await;
    for round in 1..=2 {
        let answer = node.delete(&id).await;
        assert_eq!(answer.status, 204, "delete {round}: {}", answer.text);
        assert!(answer.text.is_empty(), "a 204 has no body");
    }
    node.get(&id).await.assert_error(404, "not_found");
    assert_eq!(node.delete(&unknown_id()).await.status, 204);
    assert_eq!(node.get(&other).await.status, 200, "other sessions stay");
    node.assert_sessions_held(1, "sessions held");
}

#[tokio::test]
async fn touch_extends_the_expiry_from_now_without_a_new_version_and_can_change_the_ttl() {
    let node = Node::new();
    let created = node
        .create(&json!({"data": {"a": 1}, "ttl_secs": 60}))
        .await;
    created.assert_session(201);
    let id = created.id();

    node.advance(Duration::from_secs(10));
    let touched = node.post_action(&id, "touch", None).await;
    touched.assert_session(200);
    assert_eq!(touched.version(), 1, "touch is not a write");
    assert_eq!(touched.etag(), Some("\"1\""));
    assert_eq!(touched.body["data"], json!({"a": 1}));
    assert_eq!(touched.body["ttl_secs"], json!(60));
    assert_eq!(touched.body["updated_at"], created.body["updated_at"]);
    assert_eq!(touched.stamp("expires_at"), START_MS + 10_000 + 60_000);

    node.advance(Duration::from_secs(10));
    let longer = node
        .post_action(&id, "touch", Some(&json!({"ttl_secs": 300})))
        .await;
    longer.assert_session(200);
    assert_eq!(longer.version(), 1);
    assert_eq!(longer.body["ttl_secs"], json!(300));
    assert_eq!(
        longer.stamp("expires_at"),
        START_MS + 20_000 + 300_000,
        "the new TTL counts from now"
    );
    assert_eq!(node.get(&id).await.body["ttl_secs"], json!(300));

    node.post_action(&id, "touch", Some(&json!({"ttl_secs": 0})))
        .await
        .assert_error(400, "invalid_ttl");
    node.post_action(&id, "touch", Some(&json!({"ttl": 5})))
        .await
        .assert_error(400, "invalid_json");
}

#[tokio::test]
async fn rotate_moves_the_session_to_a_new_id_keeping_its_version_and_creation_time() {
    let node = Node::new();
    let (old, created) = node.create_session(json!({"user": 7})).await;
    node.advance(Duration::from_secs(30));
    node.put(&old, &json!({"data": {"user": 7, "role": "admin"}}), None)
        .await
        .assert_session(200);
    node.advance(Duration::from_secs(30));

    let rotated = node.post_action(&old, "rotate", None).await;
    rotated.assert_session(201);
    let new = rotated.id();
    assert_ne!(new, old);
    assert!(new.parse::<SessionId>().is_ok(), "new id {new:?}");
    assert_eq!(
        rotated.header("location"),
        Some(format!("/v1/sessions/{new}").as_str())
    );
    assert_eq!(rotated.version(), 2, "rotation keeps the version");
    assert_eq!(rotated.etag(), Some("\"2\""));
    assert_eq!(rotated.body["data"], json!({"user": 7, "role": "admin"}));
    assert_eq!(rotated.body["created_at"], created["created_at"]);
    assert_eq!(rotated.body["created_at"], json!(START));

    node.get(&old).await.assert_error(404, "not_found");
    node.post_action(&old, "rotate", None)
        .await
        .assert_error(404, "not_found");
    let read = node.get(&new).await;
    read.assert_session(200);
    assert_eq!(read.body["data"], json!({"user": 7, "role": "admin"}));
    node.assert_sessions_held(1, "sessions held");
}

#[tokio::test]
async fn an_idempotency_key_makes_a_repeated_create_answer_the_first_session() {
    let node = Node::new();
    let create = |key| create_with_key(&node, key);
    let first = create("order-1").await;
    first.assert_session(201);
    let again = create("order-1").await;
    again.assert_session(201);
    assert_eq!(again.id(), first.id(), "the same key, the same session");
    let other = create("order-2").await;
    assert_ne!(other.id(), first.id());
    node.assert_sessions_held(2, "two keys, two sessions");
    assert_eq!(first.body["data"], json!({"order": 1}));
}

/// `POST /v1/sessions` of `{"data": {"order": 1}}` with an `Idempotency-Key`.
async fn create_with_key(node: &Node, key: &str) -> sessiond_e2e::http::Answer {
    let headers = [
        ("content-type", "application/json"),
        ("idempotency-key", key),
    ];
    let body = r#"{"data": {"order": 1}}"#;
    node.request(axum::http::Method::POST, "/v1/sessions", &headers, body)
        .await
}
