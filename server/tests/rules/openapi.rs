//! The served OpenAPI document against the router that serves it: every
//! documented operation is routed, every other method of a documented path
//! is 405, every reference resolves, and what depends on the settings
//! (the token, `--max-ttl`) is what the node does.

use axum::http::Method;
use serde_json::Value;

use super::Node;

/// Methods a route may have.
const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

/// The document `node` serves.
async fn document(node: &Node) -> Value {
    let answer = node.request(Method::GET, "/v1/openapi.json", &[], "").await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    answer.body
}

/// Every documented path, with its parameters filled in, and its methods.
fn operations(doc: &Value) -> Vec<(String, Vec<Method>)> {
    let paths = doc["paths"].as_object().expect("the document has paths");
    paths
        .iter()
        .map(|(template, item)| {
            let path = template
                .replace("{id}", "AAAAAAAAAAAAAAAAAAAAAA")
                .replace("{user}", "alice");
            assert!(
                !path.contains('{'),
                "a parameter this test cannot fill: {template}"
            );
            let methods = METHODS
                .iter()
                .filter(|method| item.get(method.as_str().to_lowercase()).is_some())
                .cloned()
                .collect();
            (path, methods)
        })
        .collect()
}

/// Operation ids are unique, as OpenAPI requires: client generators name
/// their functions after them (the events page and the status page were
/// both `page`).
#[tokio::test]
async fn every_operation_has_an_id_of_its_own() {
    let node = Node::new();
    let doc = document(&node).await;
    let mut ids = Vec::new();
    for item in doc["paths"].as_object().expect("paths").values() {
        for operation in item.as_object().expect("a path item").values() {
            if let Some(id) = operation.get("operationId").and_then(Value::as_str) {
                ids.push(id.to_owned());
            }
        }
    }
    let count = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), count, "duplicate operation ids among {ids:?}");
    assert!(count >= 9, "{ids:?}");
}

#[tokio::test]
async fn every_documented_operation_is_routed_and_no_other_method_is() {
    let node = Node::new();
    let doc = document(&node).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let operations = operations(&doc);
    assert!(operations.len() >= 9, "{operations:?}");
    for (path, methods) in &operations {
        for method in &METHODS {
            let answer = node.request(method.clone(), path, &[], "").await;
            if methods.contains(method) {
                assert_ne!(answer.status, 405, "{method} {path} is documented");
                // The router's fallback, not the operation's own answer (an
                // in-process node has no metrics recorder: its /metrics says so).
                let fallback = answer.status == 404
                    && answer.body["error"]["message"]
                        .as_str()
                        .is_some_and(|message| message.starts_with("no such route"));
                assert!(!fallback, "{method} {path} is documented but not routed");
            } else {
                answer.assert_error(405, "method_not_allowed");
            }
        }
    }
}

#[tokio::test]
async fn every_reference_resolves() {
    fn walk(value: &Value, doc: &Value) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(target)) = map.get("$ref") {
                    let pointer = target.strip_prefix('#').expect("a local reference");
                    assert!(doc.pointer(pointer).is_some(), "dangling {target}");
                }
                map.values().for_each(|value| walk(value, doc));
            }
            Value::Array(items) => items.iter().for_each(|value| walk(value, doc)),
            _ => {}
        }
    }
    let node = Node::new();
    let doc = document(&node).await;
    walk(&doc, &doc);
}

#[tokio::test]
async fn security_follows_the_token() {
    let open = document(&Node::new()).await;
    let node = Node::with_token("s3cret");
    let guarded = document(&node).await;
    assert_eq!(
        guarded["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for (doc, auth) in [(&open, false), (&guarded, true)] {
        for (template, item) in doc["paths"].as_object().into_iter().flatten() {
            for (method, operation) in item.as_object().into_iter().flatten() {
                let needs_token = template.starts_with("/v1/") && template != "/v1/openapi.json";
                let security = &operation["security"];
                assert_eq!(
                    !security.is_null(),
                    auth && needs_token,
                    "{method} {template}: {security}"
                );
                assert_eq!(
                    operation["responses"].get("401").is_some(),
                    auth && needs_token,
                    "{method} {template} documents 401 exactly when it answers it"
                );
            }
        }
    }
    // What the document says, the node does.
    for (path, methods) in operations(&guarded) {
        let needs_token = path.starts_with("/v1/") && path != "/v1/openapi.json";
        for method in methods {
            let bare = node.request(method.clone(), &path, &[], "").await;
            assert_eq!(bare.status == 401, needs_token, "{method} {path}");
            let with = node
                .request(
                    method.clone(),
                    &path,
                    &[("authorization", "Bearer s3cret")],
                    "",
                )
                .await;
            assert_ne!(with.status, 401, "{method} {path}");
        }
    }
}

#[tokio::test]
async fn ttl_bounds_are_the_nodes() {
    let doc = document(&Node::new()).await;
    for schema in ["CreateRequest", "PutRequest", "TouchRequest"] {
        let ttl = &doc["components"]["schemas"][schema]["properties"]["ttl_secs"];
        assert_eq!(ttl["minimum"], 1, "{schema}");
        assert_eq!(
            ttl["maximum"], 86_400,
            "{schema}: --max-ttl of the default settings"
        );
    }
}

#[tokio::test]
async fn an_optional_body_may_be_null_as_the_document_spells_it() {
    let node = Node::new();
    let json = [("content-type", "application/json")];
    let created = node
        .request(Method::POST, "/v1/sessions", &json, "null")
        .await;
    created.assert_session(201);
    assert_eq!(created.body["data"], serde_json::json!({}));
    assert_eq!(created.body["ttl_secs"], 1800);
    let id = created.id();
    let touched = node
        .request(
            Method::POST,
            &format!("/v1/sessions/{id}/touch"),
            &json,
            " null ",
        )
        .await;
    touched.assert_session(200);
    // A replacement needs its data: null is no envelope.
    node.request(Method::PUT, &format!("/v1/sessions/{id}"), &json, "null")
        .await
        .assert_error(400, "invalid_json");
    // ttl_secs as Python's json writes a float.
    let floated = node
        .request(Method::POST, "/v1/sessions", &json, r#"{"ttl_secs": 60.0}"#)
        .await;
    floated.assert_session(201);
    assert_eq!(floated.body["ttl_secs"], 60);
}
