//! HTTP as the tests speak it: the one client constructor, and an answer
//! read whole with the assertions the API's rules share.

use std::time::Duration;

use http::HeaderMap;
use serde_json::{Value, json};

use crate::time::rfc3339_ms;

/// Bound of one HTTP exchange made with [`call`].
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// A client builder for the tests: no proxies, every request bounded by
/// `timeout`. Add what a test needs (a cookie jar) before building.
pub fn http_client_builder(timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder().no_proxy().timeout(timeout)
}

/// An HTTP client for the tests: no proxies, every request bounded by
/// `timeout`.
pub fn http_client(timeout: Duration) -> reqwest::Client {
    http_client_builder(timeout)
        .build()
        .expect("cannot build the HTTP client")
}

/// An answer, read whole: status, headers, the body as text and as JSON
/// (`Value::Null` when the body is not JSON).
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: HeaderMap,
    /// The body as text (lossy UTF-8).
    pub text: String,
    /// The body as JSON, `Null` when it is not JSON.
    pub body: Value,
}

impl Answer {
    /// An answer from its parts.
    pub fn new(status: u16, headers: HeaderMap, body: &[u8]) -> Self {
        Self {
            status,
            headers,
            text: String::from_utf8_lossy(body).into_owned(),
            body: serde_json::from_slice(body).unwrap_or(Value::Null),
        }
    }

    /// A header as text, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// The `ETag` header.
    pub fn etag(&self) -> Option<&str> {
        self.header("etag")
    }

    /// The session id of a session body.
    pub fn id(&self) -> String {
        self.body["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no id in {}", self.text))
            .to_owned()
    }

    /// The session version of a session body.
    pub fn version(&self) -> u64 {
        self.body["version"]
            .as_u64()
            .unwrap_or_else(|| panic!("no version in {}", self.text))
    }

    /// A timestamp field of a session body (`created_at`, `updated_at`,
    /// `expires_at`), in ms since the Unix epoch.
    pub fn stamp(&self, field: &str) -> u64 {
        let text = self.body[field]
            .as_str()
            .unwrap_or_else(|| panic!("no {field} in {}", self.text));
        rfc3339_ms(text)
    }

    /// `error.code` of an error body ("" when there is none).
    pub fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }

    /// Asserts the status, and that the body is a session whose ETag is
    /// its version.
    #[track_caller]
    pub fn assert_session(&self, status: u16) {
        assert_eq!(self.status, status, "body: {}", self.text);
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        let etag = format!("\"{}\"", self.version());
        assert_eq!(self.etag(), Some(etag.as_str()), "{self:?}");
    }

    /// Asserts an error answer: the status, a JSON body
    /// `{"error": {"code": code, "message": <non-empty>}}`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "body: {}", self.text);
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        assert_eq!(
            self.body["error"]["code"],
            json!(code),
            "body: {}",
            self.text
        );
        let message = self.body["error"]["message"].as_str().unwrap_or("");
        assert!(!message.is_empty(), "no message in {}", self.text);
    }
}

/// Sends `request` and reads the whole answer, panicking if there is none
/// within [`EXCHANGE_TIMEOUT`].
pub async fn call(request: reqwest::RequestBuilder) -> Answer {
    let exchange = async {
        let response = request.send().await.expect("the request got no answer");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.expect("cannot read the answer body");
        Answer::new(status, headers, &body)
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .expect("no answer in time")
}
