//! The session routes of HTTP API v1 as calls, over any [`Transport`]: a
//! real node over sockets ([`Remote`]), or a router in process (the server
//! crate's rule tests implement [`Transport`] for `http::router`).

use std::future::Future;

use http::{Method, Request, header};
use serde_json::Value;

use crate::http::{Answer, EXCHANGE_TIMEOUT, call, http_client};

/// The media type of RFC 7386 merge patches.
pub const MERGE_PATCH: &str = "application/merge-patch+json";

/// Something that answers HTTP requests of the API.
pub trait Transport: Sync {
    /// Sends `request`, whose URI is a path such as `/v1/sessions`, and
    /// reads the whole answer.
    fn send(&self, request: Request<Vec<u8>>) -> impl Future<Output = Answer> + Send;
}

/// `/v1/sessions/<id><suffix>`, suffix like "" or "/touch".
pub fn session_path(id: &str, suffix: &str) -> String {
    format!("/v1/sessions/{id}{suffix}")
}

/// A well-formed id that no server ever issued to these tests.
pub fn unknown_id() -> String {
    sessiond_proto::SessionId::random().to_string()
}

/// The API's calls over a transport.
#[derive(Debug)]
pub struct Api<T> {
    transport: T,
}

impl<T: Transport> Api<T> {
    /// The API over `transport`.
    pub fn new(transport: T) -> Self {
        Self { transport }
    }

    /// `method path` with `headers` and `body` (empty for none).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Vec<u8>>,
    ) -> Answer {
        let mut request = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(body.into())
            .unwrap_or_else(|err| panic!("cannot build the request to {path}: {err}"));
        self.transport.send(request).await
    }

    /// `method path` with `body` as `application/json`.
    pub async fn json(&self, method: Method, path: &str, body: &Value) -> Answer {
        let json = [(header::CONTENT_TYPE.as_str(), "application/json")];
        self.request(method, path, &json, body.to_string()).await
    }

    /// `POST /v1/sessions` with `body`.
    pub async fn create(&self, body: &Value) -> Answer {
        self.json(Method::POST, "/v1/sessions", body).await
    }

    /// Creates a session holding `data` (default TTL); asserts 201 and
    /// returns its id and body.
    pub async fn create_session(&self, data: Value) -> (String, Value) {
        let answer = self.create(&serde_json::json!({ "data": data })).await;
        answer.assert_session(201);
        (answer.id(), answer.body)
    }

    /// `GET /v1/sessions/<id>`.
    pub async fn get(&self, id: &str) -> Answer {
        self.request(Method::GET, &session_path(id, ""), &[], "")
            .await
    }

    /// `PUT /v1/sessions/<id>` with `body` and, if given, `If-Match`.
    pub async fn put(&self, id: &str, body: &Value, if_match: Option<&str>) -> Answer {
        let mut headers = vec![(header::CONTENT_TYPE.as_str(), "application/json")];
        headers.extend(if_match.map(|etag| (header::IF_MATCH.as_str(), etag)));
        self.request(
            Method::PUT,
            &session_path(id, ""),
            &headers,
            body.to_string(),
        )
        .await
    }

    /// `PATCH /v1/sessions/<id>` with `patch` sent as `media_type` and, if
    /// given, `If-Match`.
    pub async fn patch(
        &self,
        id: &str,
        media_type: &str,
        patch: &Value,
        if_match: Option<&str>,
    ) -> Answer {
        let mut headers = vec![(header::CONTENT_TYPE.as_str(), media_type)];
        headers.extend(if_match.map(|etag| (header::IF_MATCH.as_str(), etag)));
        let path = session_path(id, "");
        self.request(Method::PATCH, &path, &headers, patch.to_string())
            .await
    }

    /// `POST /v1/sessions/<id>/<action>` (touch, rotate), with a JSON body
    /// if given.
    pub async fn post_action(&self, id: &str, action: &str, body: Option<&Value>) -> Answer {
        let path = session_path(id, &format!("/{action}"));
        match body {
            Some(body) => self.json(Method::POST, &path, body).await,
            None => self.request(Method::POST, &path, &[], "").await,
        }
    }

    /// `DELETE /v1/sessions/<id>`.
    pub async fn delete(&self, id: &str) -> Answer {
        self.request(Method::DELETE, &session_path(id, ""), &[], "")
            .await
    }

    /// Asserts that session `id` reads back with `data` at `version`.
    pub async fn assert_stored(&self, id: &str, data: Value, version: u64) {
        let read = self.get(id).await;
        assert_eq!(read.status, 200, "{}", read.text);
        assert_eq!((read.version(), &read.body["data"]), (version, &data));
    }
}

/// A node's HTTP API over real sockets.
#[derive(Debug, Clone)]
pub struct Remote {
    base_url: String,
    client: reqwest::Client,
}

impl Api<Remote> {
    /// The API of the node at `base_url` (`http://host:port`).
    pub fn remote(base_url: &str) -> Self {
        Self::new(Remote {
            base_url: base_url.to_owned(),
            client: http_client(EXCHANGE_TIMEOUT),
        })
    }
}

impl Transport for Remote {
    fn send(&self, request: Request<Vec<u8>>) -> impl Future<Output = Answer> + Send {
        let (parts, body) = request.into_parts();
        let url = format!("{}{}", self.base_url, parts.uri);
        call(
            self.client
                .request(parts.method, url)
                .headers(parts.headers)
                .body(body),
        )
    }
}
