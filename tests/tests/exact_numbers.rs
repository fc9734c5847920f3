//! End-to-end tests that stored data keeps its exact text through merge
//! patches of other members: big integers, long decimals, `-0`, exponents,
//! string escapes and member order, over HTTP, with Redis, and through the
//! Rust client. (A merge through `serde_json::Value` turns
//! 12345678901234567890123 into 1.2345678901234568e22.)

use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use sessiond_e2e::redis_support::node_on;
use sessiond_e2e::{RedisServer, Sessiond, client_for, http_client};

/// Members whose text a round trip through `f64` or a sorted map changes,
/// in an order that is not sorted.
const CORPUS: &[(&str, &str)] = &[
    ("zeta", "12345678901234567890123"),
    ("neg_big", "-98765432109876543210987654321"),
    ("u64_plus_one", "18446744073709551616"),
    ("two_53_plus_one", "9007199254740993"),
    (
        "long_decimal",
        "0.1000000000000000055511151231257827021181583404541015625",
    ),
    ("pi", "3.14159265358979323846264338327950288419716939937510"),
    ("neg_zero", "-0"),
    ("neg_zero_float", "-0.0"),
    ("one_point_zero", "1.0"),
    ("exponent", "1E+2"),
    ("tiny", "5e-324"),
    ("max", "1.7976931348623157e308"),
    ("escaped", r#""caf\u00e9 \/ \ud83d\ude00 \"q\"""#),
    ("unicode", r#""café 😀""#),
    (
        "nested",
        r#"{"b":1.10,"a":[-0, 1e2, 12345678901234567890123]}"#,
    ),
    ("alpha", "true"),
];

/// The corpus as one compact JSON object.
fn corpus() -> String {
    let members: Vec<String> = CORPUS
        .iter()
        .map(|(key, value)| format!("\"{key}\":{value}"))
        .collect();
    format!("{{{}}}", members.join(","))
}

/// `corpus()` with `suffix` members appended.
fn corpus_with(suffix: &str) -> String {
    let corpus = corpus();
    format!("{},{suffix}}}", &corpus[..corpus.len() - 1])
}

/// The stored data's exact text, from a session body.
#[derive(Deserialize)]
struct Body {
    id: String,
    data: Box<RawValue>,
}

async fn http_call(request: reqwest::RequestBuilder, expected: u16) -> Body {
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    assert_eq!(status, expected, "{text}");
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("{err}: {text}"))
}

/// Creates the corpus, patches other members, and checks every untouched
/// member kept its exact text, on `writer` and (read back) on `reader`.
async fn patches_keep_the_text(writer: &Sessiond, reader: &Sessiond) {
    let http = http_client(Duration::from_secs(10));
    let created = http_call(
        http.post(format!("{}/v1/sessions", writer.url()))
            .header("content-type", "application/json")
            .body(format!("{{\"data\":{}}}", corpus())),
        201,
    )
    .await;
    assert_eq!(created.data.get(), corpus());
    let url = format!("{}/v1/sessions/{}", writer.url(), created.id);
    let patch = |body: &'static str| {
        http.patch(&url)
            .header("content-type", "application/merge-patch+json")
            .body(body)
    };
    let patched = http_call(patch(r#"{"x":1}"#), 200).await;
    assert_eq!(patched.data.get(), corpus_with(r#""x":1"#));
    // The patch's own values are kept as sent too.
    let patched = http_call(
        patch(r#"{"x":null,"y":98765432109876543210.000000000001}"#),
        200,
    )
    .await;
    assert_eq!(
        patched.data.get(),
        corpus_with(r#""y":98765432109876543210.000000000001"#)
    );
    let read = http_call(
        http.get(format!("{}/v1/sessions/{}", reader.url(), created.id)),
        200,
    )
    .await;
    assert_eq!(read.data.get(), patched.data.get());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_patches_keep_untouched_numbers_strings_and_order() {
    let node = Sessiond::start(&[]);
    patches_keep_the_text(&node, &node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patches_through_redis_keep_untouched_numbers_strings_and_order() {
    let redis = RedisServer::start();
    let http = http_client(Duration::from_secs(10));
    let writer = node_on(&http, &redis.url(), &[]).await;
    let reader = node_on(&http, &redis.url(), &["--consistency", "strong"]).await;
    patches_keep_the_text(&writer, &reader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_patches_keep_untouched_numbers_strings_and_order() {
    let node = Sessiond::start(&[]);
    let client = client_for(&[&node]).await;
    let data = RawValue::from_string(corpus()).expect("the corpus is JSON");
    let created = client.create(&data, None).await.expect("create");
    client
        .patch(&created.id, &serde_json::json!({"x": 1}), None)
        .await
        .expect("patch");
    let read = client.get::<Box<RawValue>>(&created.id).await.expect("get");
    assert_eq!(read.data.get(), corpus_with(r#""x":1"#));
}
