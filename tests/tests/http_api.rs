//! End-to-end tests of HTTP API v1: the real `sessiond` binary, started on
//! ephemeral loopback ports, driven with reqwest (and, where a test needs
//! bytes no HTTP client would send, a raw TCP socket).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use reqwest::header::HeaderValue;
use serde_json::{Value, json};
use sessiond_e2e::Sessiond;
use sessiond_e2e::process::signal;
use sessiond_proto::SessionId;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

mod support {
    //! What the tests repeat: a client, typed answers, session creation,
    //! timestamps, Prometheus text and raw HTTP/1.1 exchanges.

    use std::net::SocketAddr;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use reqwest::header::HeaderMap;
    use reqwest::{Client, RequestBuilder};
    use serde_json::{Value, json};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Bound of every single HTTP exchange.
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

    /// A client with a bounded timeout that ignores proxy settings.
    pub fn client() -> Client {
        Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("cannot build the HTTP client")
    }

    /// `<url>/v1/sessions`
    pub fn sessions(url: &str) -> String {
        format!("{url}/v1/sessions")
    }

    /// `<url>/v1/sessions/<id><suffix>`, suffix like "" or "/touch".
    pub fn session(url: &str, id: &str, suffix: &str) -> String {
        format!("{url}/v1/sessions/{id}{suffix}")
    }

    /// A well-formed id that no server ever issued to these tests.
    pub fn unknown_id() -> String {
        sessiond_proto::SessionId::random().to_string()
    }

    /// An answer, read whole: status, headers, the body as text and as JSON
    /// (`Value::Null` when the body is not JSON).
    #[derive(Debug)]
    pub struct Answer {
        pub status: u16,
        pub headers: HeaderMap,
        pub text: String,
        pub body: Value,
    }

    impl Answer {
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

    /// Sends `request` and reads the whole answer.
    pub async fn call(request: RequestBuilder) -> Answer {
        let response = request.send().await.expect("the request got no answer");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("cannot read the answer body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            text,
            body,
        }
    }

    /// `POST /v1/sessions` with `body` as JSON.
    pub async fn create(url: &str, body: &Value) -> Answer {
        call(client().post(sessions(url)).json(body)).await
    }

    /// Creates a session holding `data` (default TTL); asserts 201 and
    /// returns its id and body.
    pub async fn create_session(url: &str, data: Value) -> (String, Value) {
        let answer = create(url, &json!({ "data": data })).await;
        answer.assert_session(201);
        (answer.id(), answer.body)
    }

    /// `GET /v1/sessions/<id>`.
    pub async fn get(url: &str, id: &str) -> Answer {
        call(client().get(session(url, id, ""))).await
    }

    /// `PUT /v1/sessions/<id>` with `body` and, if given, `If-Match`.
    pub async fn put(url: &str, id: &str, body: &Value, if_match: Option<&str>) -> Answer {
        let mut request = client().put(session(url, id, "")).json(body);
        if let Some(etag) = if_match {
            request = request.header("if-match", etag);
        }
        call(request).await
    }

    /// `PATCH /v1/sessions/<id>` with a merge patch of the given media type.
    pub async fn patch(
        url: &str,
        id: &str,
        media_type: &str,
        patch: &Value,
        if_match: Option<&str>,
    ) -> Answer {
        let mut request = client()
            .patch(session(url, id, ""))
            .header("content-type", media_type)
            .body(patch.to_string());
        if let Some(etag) = if_match {
            request = request.header("if-match", etag);
        }
        call(request).await
    }

    /// `POST /v1/sessions/<id>/<action>` (touch, rotate) with an optional JSON body.
    pub async fn post_action(url: &str, id: &str, action: &str, body: Option<&Value>) -> Answer {
        let mut request = client().post(session(url, id, &format!("/{action}")));
        if let Some(body) = body {
            request = request.json(body);
        }
        call(request).await
    }

    /// Milliseconds since the Unix epoch of an RFC 3339 UTC timestamp
    /// `YYYY-MM-DDTHH:MM:SS[.fraction]Z`; panics on any other form.
    pub fn unix_ms(text: &str) -> i64 {
        let malformed = || panic!("not an RFC 3339 UTC ('Z') timestamp: {text:?}");
        let Some(stamp) = text.strip_suffix('Z') else {
            malformed()
        };
        let (main, fraction) = stamp.split_once('.').unwrap_or((stamp, "0"));
        let shape_ok = main.len() == 19
            && main.bytes().enumerate().all(|(at, byte)| match at {
                4 | 7 => byte == b'-',
                10 => byte == b'T',
                13 | 16 => byte == b':',
                _ => byte.is_ascii_digit(),
            })
            && !fraction.is_empty()
            && fraction.len() <= 9
            && fraction.bytes().all(|byte| byte.is_ascii_digit());
        if !shape_ok {
            malformed();
        }
        let field = |range: std::ops::Range<usize>| -> i64 {
            main[range].parse().unwrap_or_else(|_| malformed())
        };
        let (year, month, day) = (field(0..4), field(5..7), field(8..10));
        let (hour, minute, second) = (field(11..13), field(14..16), field(17..19));
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
            malformed();
        }
        let millis: i64 = format!("{fraction:0<3}")[..3]
            .parse()
            .unwrap_or_else(|_| malformed());
        // Days from the civil date (Howard Hinnant's algorithm).
        let shifted = if month <= 2 { year - 1 } else { year };
        let era = shifted.div_euclid(400);
        let year_of_era = shifted - era * 400;
        let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
        let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
        let days = era * 146_097 + day_of_era - 719_468;
        ((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis
    }

    /// This machine's clock, in ms since the Unix epoch.
    pub fn now_ms() -> i64 {
        let elapsed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock before 1970");
        i64::try_from(elapsed.as_millis()).expect("clock overflow")
    }

    /// The `/metrics` text.
    pub async fn metrics(url: &str) -> String {
        let answer = call(client().get(format!("{url}/metrics"))).await;
        assert_eq!(answer.status, 200, "/metrics: {}", answer.text);
        answer.text
    }

    /// Asserts that session `id` reads back with `data` at `version`.
    pub async fn assert_stored(url: &str, id: &str, data: Value, version: u64) {
        let read = get(url, id).await;
        assert_eq!(read.status, 200, "{}", read.text);
        assert_eq!((read.version(), &read.body["data"]), (version, &data));
    }

    /// Asserts that the node holds exactly `sessions` sessions
    /// (`sessiond_sessions`), explaining a mismatch with `why`.
    pub async fn assert_sessions_held(url: &str, sessions: f64, why: &str) {
        let text = metrics(url).await;
        assert_eq!(
            metric(&text, "sessiond_sessions", &[]),
            Some(sessions),
            "{why}"
        );
    }

    /// A Prometheus sample: metric name, labels (key, value), value.
    type Sample<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64);

    /// One sample line of the Prometheus text format.
    fn parse_sample(line: &str) -> Option<Sample<'_>> {
        let (series, value) = line.rsplit_once(' ')?;
        let value = value.parse().ok()?;
        let Some((name, rest)) = series.split_once('{') else {
            return Some((series, Vec::new(), value));
        };
        let mut inner = rest.strip_suffix('}')?;
        let mut labels = Vec::new();
        while !inner.is_empty() {
            let (key, after) = inner.split_once("=\"")?;
            let mut escaped = false;
            let end = after.char_indices().find_map(|(at, c)| {
                let closes = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                closes.then_some(at)
            })?;
            labels.push((key, &after[..end]));
            inner = after[end + 1..].trim_start_matches(',');
        }
        Some((name, labels, value))
    }

    /// The sum of the samples of `name` carrying all of `labels`; `None`
    /// when no sample matches.
    pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(parse_sample)
            .filter(|(sample, have, _)| {
                *sample == name && labels.iter().all(|wanted| have.contains(wanted))
            })
            .map(|(_, _, value)| value)
            .reduce(|sum, value| sum + value)
    }

    /// The values of label `key` over all samples of `name`.
    pub fn label_values(text: &str, name: &str, key: &str) -> Vec<String> {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(parse_sample)
            .filter(|(sample, _, _)| *sample == name)
            .flat_map(|(_, labels, _)| {
                labels
                    .into_iter()
                    .filter(|(label, _)| *label == key)
                    .map(|(_, value)| value.to_owned())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Reads one HTTP/1.1 response (sized by Content-Length) from `stream`:
    /// its status and body. Bounded by [`REQUEST_TIMEOUT`].
    pub async fn read_response(stream: &mut TcpStream) -> (u16, Vec<u8>) {
        let read = async {
            let mut buffer = Vec::new();
            loop {
                if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
                    let status = head
                        .split(' ')
                        .nth(1)
                        .and_then(|code| code.parse().ok())
                        .unwrap_or_else(|| panic!("not an HTTP response: {head:?}"));
                    let length = head
                        .lines()
                        .filter_map(|line| line.split_once(':'))
                        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                        .map_or(0, |(_, value)| value.trim().parse().unwrap_or(0));
                    let body = end + 4;
                    if buffer.len() >= body + length {
                        return (status, buffer[body..body + length].to_vec());
                    }
                }
                let mut chunk = [0u8; 8192];
                let read = stream.read(&mut chunk).await.expect("cannot read");
                assert!(
                    read > 0,
                    "the connection closed before a whole response: {:?}",
                    String::from_utf8_lossy(&buffer)
                );
                buffer.extend_from_slice(&chunk[..read]);
            }
        };
        tokio::time::timeout(REQUEST_TIMEOUT, read)
            .await
            .expect("no response in time")
    }

    /// Sends `bytes` on a fresh connection and returns the response status.
    pub async fn raw_status(addr: SocketAddr, bytes: &[u8]) -> u16 {
        let mut stream = TcpStream::connect(addr).await.expect("cannot connect");
        stream.write_all(bytes).await.expect("cannot write");
        read_response(&mut stream).await.0
    }
}

// ---------------------------------------------------------------- create

#[tokio::test]
async fn create_answers_201_with_the_session_its_etag_and_location() {
    let server = Sessiond::start(&[]);
    let data = json!({
        "user": {"id": 42, "name": "Zoë 🚀"},
        "roles": ["admin", "dev"],
        "flags": {"beta": true, "none": null},
        "score": 1.5
    });
    let before = now_ms();
    let answer = create(&server.url(), &json!({"data": data, "ttl_secs": 120})).await;
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

    let stamp = |field: &str| unix_ms(answer.body[field].as_str().unwrap_or(""));
    let (created, updated, expires) = (
        stamp("created_at"),
        stamp("updated_at"),
        stamp("expires_at"),
    );
    assert_eq!(
        created, updated,
        "a new session was last written when created"
    );
    assert_eq!(expires - updated, 120_000, "expires_at is updated_at + ttl");
    // Same machine, same clock: the stamp is now, not some other epoch.
    assert!(
        (created - before).abs() < 600_000,
        "created_at {created} vs now {before}"
    );

    let read = get(&server.url(), &id).await;
    read.assert_session(200);
    assert_eq!(read.body["data"], data);
}

#[tokio::test]
async fn create_without_data_stores_an_empty_object_with_the_default_ttl() {
    let server = Sessiond::start(&["--default-ttl", "90s"]);
    let url = server.url();
    let no_body = call(client().post(sessions(&url))).await;
    let empty_object = create(&url, &json!({})).await;
    let null_data = create(&url, &json!({"data": null})).await;
    for answer in [no_body, empty_object, null_data] {
        answer.assert_session(201);
        assert_eq!(answer.body["data"], json!({}), "{}", answer.text);
        assert_eq!(answer.body["ttl_secs"], json!(90), "{}", answer.text);
        let expires = unix_ms(answer.body["expires_at"].as_str().unwrap_or(""));
        let updated = unix_ms(answer.body["updated_at"].as_str().unwrap_or(""));
        assert_eq!(expires - updated, 90_000);
    }
}

#[tokio::test]
async fn create_refuses_a_zero_ttl_and_a_ttl_above_max_ttl_as_invalid_ttl() {
    let server = Sessiond::start(&["--max-ttl", "1h", "--default-ttl", "1m"]);
    let url = server.url();
    for ttl in [0, 3601, u64::MAX] {
        create(&url, &json!({"data": {}, "ttl_secs": ttl}))
            .await
            .assert_error(400, "invalid_ttl");
    }
    let at_the_limit = create(&url, &json!({"data": {}, "ttl_secs": 3600})).await;
    at_the_limit.assert_session(201);
    assert_eq!(at_the_limit.body["ttl_secs"], json!(3600));
    assert_sessions_held(&url, 1.0, "refusals store nothing").await;
}

#[tokio::test]
async fn create_refuses_unknown_fields_and_malformed_json_as_invalid_json() {
    let server = Sessiond::start(&[]);
    let url = server.url();
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
        let answer = call(
            client()
                .post(sessions(&url))
                .header("content-type", "application/json")
                .body(body),
        )
        .await;
        answer.assert_error(400, "invalid_json");
    }
    assert_sessions_held(&url, 0.0, "sessions held").await;
}

#[tokio::test]
async fn create_with_a_body_that_is_not_application_json_is_unsupported_media_type() {
    let server = Sessiond::start(&[]);
    let url = server.url();
    let body = r#"{"data": {"a": 1}}"#;
    for content_type in [Some("text/plain"), Some("application/xml"), None] {
        let mut request = client().post(sessions(&url)).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        call(request)
            .await
            .assert_error(415, "unsupported_media_type");
    }
    for accepted in ["application/json; charset=utf-8", "Application/JSON"] {
        let answer = call(
            client()
                .post(sessions(&url))
                .header("content-type", accepted)
                .body(body),
        )
        .await;
        answer.assert_session(201);
        assert_eq!(answer.body["data"], json!({"a": 1}));
    }
}

// ---------------------------------------------------------------- get

#[tokio::test]
async fn get_answers_200_with_the_session_and_its_etag() {
    let server = Sessiond::start(&[]);
    let url = server.url();
    let (id, created) = create_session(&url, json!({"cart": [1, 2, 3]})).await;
    let answer = get(&url, &id).await;
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
    let expires = |body: &Value| unix_ms(body["expires_at"].as_str().unwrap_or(""));
    assert!(
        expires(&answer.body) >= expires(&created),
        "a read never shortens the expiry"
    );
}

#[tokio::test]
async fn get_of_an_unknown_well_formed_id_is_not_found() {
    let server = Sessiond::start(&[]);
    let url = server.url();
    create_session(&url, json!({})).await;
    for id in [unknown_id(), "AAAAAAAAAAAAAAAAAAAAAA".to_owned()] {
        get(&url, &id).await.assert_error(404, "not_found");
    }
}

#[tokio::test]
async fn malformed_ids_are_invalid_id_on_every_session_route() {
    let server = Sessiond::start(&[]);
    let url = server.url();
    let malformed = [
        "abc",                     // too short
        "AAAAAAAAAAAAAAAAAAAAAAA", // 23 characters
        "AAAAAAAAAAAAAAAAAAAA!*",  // outside base64url
        "AAAAAAAAAAAAAAAAAAAAA=",  // padding
        "AAAAAAAAAAAAAAAAAAAAAB",  // 22 characters but not canonical
        "%C3%A9AAAAAAAAAAAAAAAAAAAA",
    ];
    let client = client();
    for id in malformed {
        let target = |suffix: &str| session(&url, id, suffix);
        let requests = [
            client.get(target("")),
            client.put(target("")).json(&json!({"data": {}})),
            client
                .patch(target(""))
                .header("content-type", "application/merge-patch+json")
                .body("{}"),
            client.delete(target("")),
            client.post(target("/touch")),
            client.post(target("/rotate")),
        ];
        for request in requests {
            call(request).await.assert_error(400, "invalid_id");
        }
    }
}

// ---------------------------------------------------------------- expiry

#[tokio::test]
async fn a_session_is_gone_once_its_idle_ttl_has_passed() {
    let server = Sessiond::start(&[]);
    let url = server.url();
    let answer = create(&url, &json!({"data": {"short": true}, "ttl_secs": 1})).await;
    answer.assert_session(201);
    assert_eq!(answer.body["ttl_secs"], json!(1));
    let id = answer.id();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    get(&url, &id).await.assert_error(404, "not_found");
    put(&url, &id, &json!({"data": {}}), None)
        .await
        .assert_error(404, "not_found");
}

#[tokio::test]
async fn reads_slide_the_expiry_and_keep_a_session_alive() {
    let server = Sessiond::start(&[]);
    let url = server.url();
    let answer = create(&url, &json!({"data": {"n": 1}, "ttl_secs": 2})).await;
    answer.assert_session(201);
    let id = answer.id();
    let mut last_expiry = unix_ms(answer.body["expires_at"].as_str().unwrap_or(""));
    // Four reads one second apart: the session lives twice its TTL.
    for round in 1..=4 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let read = get(&url, &id).await;
        assert_eq!(read.status, 200, "read {round}: {}", read.text);
        let expiry = unix_ms(read.body["expires_at"].as_str().unwrap_or(""));
        assert!(expiry > last_expiry, "read {round} did not push expires_at");
        last_expiry = expiry;
    }
    // Left alone for longer than its TTL, it expires.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    get(&url, &id).await.assert_error(404, "not_found");
}

#[tokio::test]
async fn max_lifetime_caps_a_session_however_often_it_is_read() {
    let server = Sessiond::start(&["--max-lifetime", "2s"]);
    let url = server.url();
    let answer = create(&url, &json!({"data": {}, "ttl_secs": 60})).await;
    answer.assert_session(201);
    let id = answer.id();
    let stamp = |body: &Value, field: &str| unix_ms(body[field].as_str().unwrap_or(""));
    assert_eq!(
        stamp(&answer.body, "expires_at") - stamp(&answer.body, "created_at"),
        2000,
        "the cap, not the 60 s TTL, sets expires_at"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let read = get(&url, &id).await;
    read.assert_session(200);
    assert_eq!(
        stamp(&read.body, "expires_at") - stamp(&read.body, "created_at"),
        2000,
        "a read does not move the cap"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    get(&url, &id).await.assert_error(404, "not_found");
}

// ---------------------------------------------------------------- put

#[tokio::test]
async fn put_replaces_the_data_whole_and_bumps_the_version() {
    let server = Sessiond::start(&[]);
    let url = server.url();
    let (id, created) = create_session(&url, json!({"a": 1, "b": 2})).await;
    let answer = put(&url, &id, &json!({"data": {"c": 3}}), None).await;
    answer.assert_session(200);
    assert_eq!(answer.body["version"], json!(2));
    assert_eq!(answer.etag(), Some("\"2\""));
    assert_eq!(
        answer.body["data"],
        json!({"c": 3}),
        "PUT replaces, it does not merge"
    );
    assert_eq!(answer.body["created_at"], created["created_at"]);
    assert_eq!(
        answer.body["ttl_secs"], created["ttl_secs"],
        "the TTL is kept"
    );

    let with_ttl = put(&url, &id, &json!({"data": [true], "ttl_secs": 60}), None).await;
    with_ttl.assert_session(200);
    assert_eq!(with_ttl.body["version"], json!(3));
    assert_eq!(with_ttl.body["ttl_secs"], json!(60));
    put(&url, &id, &json!({"data": "no", "ttl_secs": 0}), None)
        .await
        .assert_error(400, "invalid_ttl");

    let read = get(&url, &id).await;
    read.assert_session(200);
    assert_eq!(read.body["data"], json!([true]));
    assert_eq!(read.etag(), Some("\"3\""));
}

#[tokio::test]
async fn put_with_a_stale_if_match_is_version_mismatch_and_changes_nothing() {
    let server = Sessiond::start(&[]);
    let url = server.url();
    let (id, _) = create_session(&url, json!({"step": 0})).await;

    let first = put(&url, &id, &json!({"data": {"step": 1}}), Some("\"1\"")).await;
    first.assert_session(200);
    assert_eq!(first.version(), 2);

    let stale = put(&url, &id, &json!({"data": {"step": 99}}), Some("\"1\"")).await;
    stale.assert_error(412, "version_mismatch");
    assert_eq!(stale.body["error"]["current_version"], json!(2));
    assert_eq!(
        stale.etag(),
        Some("\"2\""),
        "a 412 carries the current ETag"
    );

    let unquoted = put(&url, &id, &json!({"data": {"step": 2}}), Some("2")).await;
    unquoted.assert_session(200);
    assert_eq!(unquoted.version(), 3);
    let any = put(&url, &id, &json!({"data": {"step": 3}}), Some("*")).await;
    any.assert_session(200);
    assert_eq!(any.version(), 4);

    assert_stored(&url, &id, json!({"step": 3}), 4).await;
}

#[tokio::test]
async fn put_with_a_malformed_if_match_is_invalid_request() {
    let server = Sessiond::start(&[]);
    let url = server.url();
    let (id, _) = create_session(&url, json!({"kept": true})).await;
    for if_match in ["W/\"1\"", "\"one\"", "\"1\", \"2\"", "\"-1\"", "\"\""] {
        put(&url, &id, &json!({"data": {}}), Some(if_match))
            .await
            .assert_error(400, "invalid_request");
    }
    assert_stored(&url, &id, json!({"kept": true}), 1).await;
}

#[tokio::test]
async fn put_patch_touch_and_rotate_of_an_unknown_id_are_not_found_and_create_nothing() {
    let server = Sessiond::start(&[]);
    let url = server.url();
    let id = unknown_id();
    put(&url, &id, &json!({"data": {"a": 1}}), None)
        .await
        .assert_error(404, "not_found");
    put(&url, &id, &json!({"data": {"a": 1}}), Some("\"1\""))
        .await
        .assert_error(404, "not_found");
    patch(
        &url,
        &id,
        "application/merge-patch+json",
        &json!({"a": 1}),
        None,
    )
    .await
    .assert_error(404, "not_found");
    post_action(&url, &id, "touch", None)
        .await
        .assert_error(404, "not_found");
    post_action(&url, &id, "rotate", None)
        .await
        .assert_error(404, "not_found");
    get(&url, &id).await.assert_error(404, "not_found");
    assert_sessions_held(&url, 0.0, "sessions held").await;
}

#[tokio::test]
async fn put_without_a_data_field_is_invalid_json() {
    let server = Sessiond::start(&[]);
    let url = server.url();
    let (id, _) = create_session(&url, json!({"kept": true})).await;
    for body in [
        json!({}),
        json!({"ttl_secs": 60}),
        json!({"data": {}, "extra": 1}),
    ] {
        put(&url, &id, &body, None)
            .await
            .assert_error(400, "invalid_json");
    }
    call(client().put(session(&url, &id, "")))
        .await
        .assert_error(400, "invalid_json");
    call(
        client()
            .put(session(&url, &id, ""))
            .header("content-type", "text/plain")
            .body(r#"{"data": {}}"#),
    )
    .await
    .assert_error(415, "unsupported_media_type");
    assert_stored(&url, &id, json!({"kept": true}), 1).await;
}

// ---------------------------------------------------------------- patch

const MERGE_PATCH: &str = "application/merge-patch+json";

#[tokio::test]
async fn merge_patch_removes_null_keys_and_merges_nested_objects() {
    let server = Sessiond::start(&[]);
    let url = server.url();
    let (id, _) = create_session(
        &url,
        json!({"a": 1, "b": {"c": 2, "d": 3, "gone": 0}, "list": [1, 2], "keep": "yes"}),
    )
    .await;
    let answer = patch(
        &url,
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
    let replaced = patch(&url, &id, MERGE_PATCH, &json!(["whole"]), None).await;
    replaced.assert_session(200);
    assert_eq!(replaced.body["data"], json!(["whole"]));
    assert_eq!(replaced.version(), 3);
    assert_eq!(get(&url, &id).await.body["data"], json!(["whole"]));
}

#[tokio::test]
async fn merge_patch_honours_if_match() {
    let server = Sessiond::start(&[]);
    let url = server.url();
    let (id, _) = create_session(&url, json!({"n": 0})).await;
    let first = patch(&url, &id, MERGE_PATCH, &json!({"n": 1}), Some("\"1\"")).await;
    first.assert_session(200);
    assert_eq!(first.version(), 2);

    let stale = patch(&url, &id, MERGE_PATCH, &json!({"n": 99}), Some("\"1\"")).await;
    stale.assert_error(412, "version_mismatch");
    assert_eq!(stale.body["error"]["current_version"], json!(2));
    assert_eq!(stale.etag(), Some("\"2\""));

    patch(&url, &id, MERGE_PATCH, &json!({"n": 98}), Some("W/\"2\""))
        .await
        .assert_error(400, "invalid_request");
    assert_stored(&url, &id, json!({"n": 1}), 2).await;
}

#[tokio::test]
async fn patch_with_application_json_is_unsupported_media_type() {
    let server = Sessiond::start(&[]);
    let url = server.url();
    let (id, _) = create_session(&url, json!({"n": 0})).await;
    for media_type in ["application/json", "text/plain"] {
        patch(&url, &id, media_type, &json!({"n": 1}), None)
            .await
            .assert_error(415, "unsupported_media_type");
    }
    assert_stored(&url, &id, json!({"n": 0}), 1).await;
}

// ---------------------------------------------------------------- delete

#[tokio::test]
async fn delete_answers_204_twice_and_the_session_is_gone() {
    let server = Sessiond::start(&[]);
    let url = server.url();
    let (id, _) = create_session(&url, json!({"a": 1})).await;
    let (other, _) = create_session(&url, json!({"b": 2})).await;
    for round in 1..=2 {
        let answer = call(client().delete(session(&url, &id, ""))).await;
        assert_eq!(answer.status, 204, "delete {round}: {}", answer.text);
        assert!(answer.text.is_empty(), "a 204 has no body");
    }
    get(&url, &id).await.assert_error(404, "not_found");
    let never = call(client().delete(session(&url, &unknown_id(), ""))).await;
    assert_eq!(never.status, 204);
    assert_eq!(get(&url, &other).await.status, 200, "other sessions stay");
    assert_sessions_held(&url, 1.0, "sessions held").await;
}

// ---------------------------------------------------------------- touch, rotate

#[tokio::test]
async fn touch_extends_the_expiry_without_a_new_version_and_can_change_the_ttl() {
    let server = Sessiond::start(&[]);
    let url = server.url();
    let created = create(&url, &json!({"data": {"a": 1}, "ttl_secs": 60})).await;
    created.assert_session(201);
    let id = created.id();
    let stamp = |answer: &Answer, field: &str| unix_ms(answer.body[field].as_str().unwrap_or(""));

    let touched = post_action(&url, &id, "touch", None).await;
    touched.assert_session(200);
    assert_eq!(touched.version(), 1, "touch is not a write");
    assert_eq!(touched.etag(), Some("\"1\""));
    assert_eq!(touched.body["data"], json!({"a": 1}));
    assert_eq!(touched.body["ttl_secs"], json!(60));
    assert_eq!(touched.body["updated_at"], created.body["updated_at"]);
    assert!(stamp(&touched, "expires_at") >= stamp(&created, "expires_at"));

    let longer = post_action(&url, &id, "touch", Some(&json!({"ttl_secs": 300}))).await;
    longer.assert_session(200);
    assert_eq!(longer.version(), 1);
    assert_eq!(longer.body["ttl_secs"], json!(300));
    assert!(
        stamp(&longer, "expires_at") - stamp(&created, "expires_at") >= 240_000,
        "the new TTL counts from now"
    );
    assert_eq!(get(&url, &id).await.body["ttl_secs"], json!(300));

    post_action(&url, &id, "touch", Some(&json!({"ttl_secs": 0})))
        .await
        .assert_error(400, "invalid_ttl");
    post_action(&url, &id, "touch", Some(&json!({"ttl": 5})))
        .await
        .assert_error(400, "invalid_json");
}

#[tokio::test]
async fn rotate_moves_the_session_to_a_new_id_and_the_old_id_stops_working() {
    let server = Sessiond::start(&[]);
    let url = server.url();
    let (old, created) = create_session(&url, json!({"user": 7})).await;
    put(
        &url,
        &old,
        &json!({"data": {"user": 7, "role": "admin"}}),
        None,
    )
    .await
    .assert_session(200);

    let rotated = post_action(&url, &old, "rotate", None).await;
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

    get(&url, &old).await.assert_error(404, "not_found");
    post_action(&url, &old, "rotate", None)
        .await
        .assert_error(404, "not_found");
    let read = get(&url, &new).await;
    read.assert_session(200);
    assert_eq!(read.body["data"], json!({"user": 7, "role": "admin"}));
    assert_sessions_held(&url, 1.0, "sessions held").await;
}

// ---------------------------------------------------------------- size limits

#[tokio::test]
async fn data_over_max_session_bytes_is_payload_too_large() {
    let server = Sessiond::start(&["--max-session-bytes", "1KiB"]);
    let url = server.url();
    let big = json!("x".repeat(2048));
    create(&url, &json!({"data": big}))
        .await
        .assert_error(413, "payload_too_large");

    let kept = json!({"y": "y".repeat(900)});
    let (id, _) = create_session(&url, kept.clone()).await;
    put(&url, &id, &json!({"data": big}), None)
        .await
        .assert_error(413, "payload_too_large");
    // Each part is small; the merged document is over 1 KiB.
    patch(
        &url,
        &id,
        MERGE_PATCH,
        &json!({"more": "z".repeat(200)}),
        None,
    )
    .await
    .assert_error(413, "payload_too_large");
    assert_stored(&url, &id, kept, 1).await;
}

#[tokio::test]
async fn a_body_far_over_the_limit_is_payload_too_large() {
    let server = Sessiond::start(&["--max-session-bytes", "1KiB"]);
    let url = server.url();
    let huge = json!({"data": "x".repeat(1 << 20)});
    create(&url, &huge)
        .await
        .assert_error(413, "payload_too_large");
    let (id, _) = create_session(&url, json!({})).await;
    put(&url, &id, &huge, None)
        .await
        .assert_error(413, "payload_too_large");
    assert_eq!(
        call(client().get(format!("{url}/healthz"))).await.status,
        200
    );
}

// ---------------------------------------------------------------- store full

/// Data of the same size for every `n` below 1000.
fn padded(n: usize) -> Value {
    json!({"n": format!("{n:03}"), "pad": "p".repeat(100)})
}

#[tokio::test]
async fn a_full_store_that_rejects_answers_507_and_keeps_every_session() {
    let server = Sessiond::start(&["--max-memory", "4KiB"]);
    let url = server.url();
    let mut kept = Vec::new();
    let mut refusal = None;
    for n in 0..200 {
        let answer = create(&url, &json!({ "data": padded(n) })).await;
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
        let read = get(&url, id).await;
        assert_eq!(read.status, 200, "session {n} was lost: {}", read.text);
        assert_eq!(read.body["data"], padded(*n));
    }
    create(&url, &json!({ "data": padded(999) }))
        .await
        .assert_error(507, "store_full");
    let (last, n) = kept.last().expect("one session");
    let grown = json!({"n": "grown", "pad": "p".repeat(2000)});
    put(&url, last, &json!({ "data": grown }), None)
        .await
        .assert_error(507, "store_full");
    let read = get(&url, last).await;
    assert_eq!((read.version(), &read.body["data"]), (1, &padded(*n)));

    // Deleting a session makes room for one of the same size.
    let (first, _) = &kept[0];
    assert_eq!(
        call(client().delete(session(&url, first, ""))).await.status,
        204
    );
    create(&url, &json!({ "data": padded(998) }))
        .await
        .assert_session(201);

    let text = metrics(&url).await;
    assert_eq!(
        metric(&text, "sessiond_sessions", &[]),
        Some(kept.len() as f64)
    );
    assert!(
        metric(&text, "sessiond_rejections_total", &[]) >= Some(3.0),
        "{text}"
    );
    assert_eq!(metric(&text, "sessiond_evictions_total", &[]), Some(0.0));
}

#[tokio::test]
async fn a_full_store_that_evicts_keeps_accepting_and_counts_evictions() {
    let server = Sessiond::start(&["--max-memory", "4KiB", "--when-full", "evict-lru"]);
    let url = server.url();
    let mut ids = Vec::new();
    for n in 0..100 {
        let answer = create(&url, &json!({ "data": padded(n) })).await;
        answer.assert_session(201);
        ids.push(answer.id());
    }
    let text = metrics(&url).await;
    let evictions = metric(&text, "sessiond_evictions_total", &[]).unwrap_or(0.0);
    assert!(evictions > 0.0, "no evictions counted:\n{text}");
    let used = metric(&text, "sessiond_memory_used_bytes", &[]).unwrap_or(f64::MAX);
    assert!(used > 0.0 && used <= 4096.0, "memory used {used}");
    let held = metric(&text, "sessiond_sessions", &[]).unwrap_or(-1.0);
    assert_eq!(
        held + evictions,
        100.0,
        "every session is held or was evicted"
    );

    let mut readable = 0;
    for (n, id) in ids.iter().enumerate() {
        let read = get(&url, id).await;
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
        get(&url, &ids[99]).await.status,
        200,
        "the newest session was evicted"
    );
}

#[tokio::test]
async fn expired_sessions_give_their_memory_back() {
    let server = Sessiond::start(&["--max-memory", "4KiB"]);
    let url = server.url();
    let mut created = 0;
    let mut full = false;
    for n in 0..200 {
        let answer = create(&url, &json!({ "data": padded(n), "ttl_secs": 1 })).await;
        if answer.status == 507 {
            answer.assert_error(507, "store_full");
            full = true;
            break;
        }
        answer.assert_session(201);
        created += 1;
    }
    assert!(full && created > 0, "4 KiB never filled up");
    // Nobody reads them: the sweeper alone must free them (bounded wait).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut text = metrics(&url).await;
    for _ in 0..50 {
        if metric(&text, "sessiond_sessions", &[]) == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        text = metrics(&url).await;
    }
    assert_eq!(metric(&text, "sessiond_sessions", &[]), Some(0.0), "{text}");
    assert_eq!(
        metric(&text, "sessiond_memory_used_bytes", &[]),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "sessiond_expirations_total", &[]),
        Some(created as f64),
        "{text}"
    );
    for n in 0..created {
        create(&url, &json!({ "data": padded(n) }))
            .await
            .assert_session(201);
    }
}

// ---------------------------------------------------------------- auth

#[tokio::test]
async fn a_bearer_token_guards_v1_but_not_health_or_metrics() {
    let server = Sessiond::start(&["--auth-token", "s3cret-token"]);
    let url = server.url();
    let client = client();
    let body = json!({"data": {"a": 1}});

    let missing = call(client.post(sessions(&url)).json(&body)).await;
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
                .post(sessions(&url))
                .header("authorization", wrong)
                .json(&body),
        )
        .await;
        answer.assert_error(401, "unauthorized");
        assert_eq!(answer.header("www-authenticate"), Some("Bearer"));
    }

    let created = call(
        client
            .post(sessions(&url))
            .bearer_auth("s3cret-token")
            .json(&body),
    )
    .await;
    created.assert_session(201);
    let id = created.id();
    call(client.get(session(&url, &id, "")))
        .await
        .assert_error(401, "unauthorized");
    call(client.delete(session(&url, &id, "")))
        .await
        .assert_error(401, "unauthorized");
    let read = call(
        client
            .get(session(&url, &id, ""))
            .bearer_auth("s3cret-token"),
    )
    .await;
    read.assert_session(200);
    assert_eq!(read.body["data"], json!({"a": 1}));

    for open in ["/healthz", "/readyz", "/metrics"] {
        let answer = call(client.get(format!("{url}{open}"))).await;
        assert_eq!(answer.status, 200, "{open} needs no token: {}", answer.text);
    }
    assert_sessions_held(&url, 1.0, "401s store nothing").await;
}

// ---------------------------------------------------------------- routing, health, metrics

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_are_405() {
    let server = Sessiond::start(&[]);
    let url = server.url();
    let client = client();
    let (id, _) = create_session(&url, json!({})).await;
    for path in [
        "/nope".to_owned(),
        "/v1/nope".to_owned(),
        format!("/v1/sessions/{id}/nope"),
    ] {
        call(client.get(format!("{url}{path}")))
            .await
            .assert_error(404, "unknown_route");
    }
    let wrong_methods = [
        client.put(sessions(&url)),
        client.delete(sessions(&url)),
        client.get(sessions(&url)),
        client.get(session(&url, &id, "/touch")),
        client.delete(session(&url, &id, "/rotate")),
        client.post(session(&url, &id, "")),
        client.post(format!("{url}/healthz")),
    ];
    for request in wrong_methods {
        call(request).await.assert_error(405, "method_not_allowed");
    }
    assert_eq!(get(&url, &id).await.version(), 1, "nothing was written");
}

#[tokio::test]
async fn healthz_and_readyz_answer_200() {
    let server = Sessiond::start(&[]);
    let url = server.url();
    let health = call(client().get(format!("{url}/healthz"))).await;
    assert_eq!((health.status, health.text.as_str()), (200, "ok\n"));
    let ready = call(client().get(format!("{url}/readyz"))).await;
    assert_eq!((ready.status, ready.text.as_str()), (200, "ready\n"));
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status_and_show_sessions_memory_and_latency() {
    let server = Sessiond::start(&[]);
    let url = server.url();
    let (id, _) = create_session(&url, json!({"a": 1})).await;
    create_session(&url, json!({"b": 2})).await;
    assert_eq!(get(&url, &id).await.status, 200);
    assert_eq!(get(&url, &unknown_id()).await.status, 404);

    let answer = call(client().get(format!("{url}/metrics"))).await;
    assert_eq!(answer.status, 200);
    let content_type = answer.header("content-type").unwrap_or("");
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = answer.text;

    let requests = |route, method, status| {
        metric(
            &text,
            "sessiond_http_requests_total",
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    assert_eq!(requests("/v1/sessions", "POST", "201"), Some(2.0), "{text}");
    assert_eq!(
        requests("/v1/sessions/{id}", "GET", "200"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        requests("/v1/sessions/{id}", "GET", "404"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(metric(&text, "sessiond_sessions", &[]), Some(2.0), "{text}");
    let used = metric(&text, "sessiond_memory_used_bytes", &[]).unwrap_or(0.0);
    assert!(used > 0.0, "{text}");
    let all_creations = metric(
        &text,
        "sessiond_http_request_duration_seconds_bucket",
        &[("route", "/v1/sessions"), ("le", "+Inf")],
    );
    assert_eq!(all_creations, Some(2.0), "{text}");
}

// ---------------------------------------------------------------- concurrency

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_conditional_writes_lose_no_update() {
    const WRITERS: u64 = 64;
    const ATTEMPTS: usize = 50;
    let server = Sessiond::start(&[]);
    let url = server.url();
    let (id, _) = create_session(&url, json!({"writes": []})).await;
    let deadline = Instant::now() + Duration::from_secs(120);

    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let (url, id) = (url.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            let client = client();
            let (mut successes, mut conflicts) = (0u64, 0u64);
            for _ in 0..ATTEMPTS {
                if successes > 0 || Instant::now() > deadline {
                    break;
                }
                let read = call(client.get(session(&url, &id, ""))).await;
                read.assert_session(200);
                let mut data = read.body["data"].clone();
                data["writes"]
                    .as_array_mut()
                    .expect("writes is an array")
                    .push(json!(writer));
                let etag = format!("\"{}\"", read.version());
                let written = call(
                    client
                        .put(session(&url, &id, ""))
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

    let last = get(&url, &id).await;
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

// ---------------------------------------------------------------- shutdown

#[tokio::test]
async fn sigterm_lets_requests_in_flight_finish_and_exits_with_code_0() {
    const IN_FLIGHT: usize = 3;
    let mut server = Sessiond::start(&[]);
    let mut connections = Vec::new();
    for n in 0..IN_FLIGHT {
        let mut stream = TcpStream::connect(server.http).await.expect("connect");
        // One whole exchange first, so the server has surely accepted the connection.
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: sessiond\r\n\r\n")
            .await
            .expect("write");
        assert_eq!(read_response(&mut stream).await.0, 200);
        // Then a creation whose body is only half sent.
        let body = json!({"data": {"in_flight": n}}).to_string();
        let (first_half, second_half) = body.split_at(body.len() / 2);
        let head = format!(
            "POST /v1/sessions HTTP/1.1\r\nHost: sessiond\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{first_half}",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.expect("write");
        connections.push((stream, second_half.to_owned(), n));
    }
    // Give the server time to start reading those bodies, then stop it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(server.pid(), "TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;

    for (stream, second_half, n) in &mut connections {
        stream
            .write_all(second_half.as_bytes())
            .await
            .expect("write");
        let (status, body) = read_response(stream).await;
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        assert_eq!(status, 201, "request {n} in flight: {body}");
        assert_eq!(body["data"], json!({"in_flight": n}));
    }
    assert_eq!(server.terminate(), Some(0));
}

// ---------------------------------------------------------------- garbage

#[tokio::test]
async fn garbage_requests_get_4xx_and_the_server_keeps_serving() {
    let server = Sessiond::start(&[]);
    let url = server.url();
    let client = client();
    let (id, _) = create_session(&url, json!({"a": 1})).await;
    let binary: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let huge = "x".repeat(64 * 1024);
    let invalid_utf8 = HeaderValue::from_bytes(b"\"\xff\xfe\"").expect("obs-text header");

    let requests = [
        client
            .post(sessions(&url))
            .header("content-type", "application/json")
            .body(binary.clone()),
        client
            .put(session(&url, &id, ""))
            .header("content-type", "application/json")
            .body(binary.clone()),
        client
            .patch(session(&url, &id, ""))
            .header("content-type", MERGE_PATCH)
            .body(binary.clone()),
        client
            .post(session(&url, &id, "/touch"))
            .header("content-type", "application/json")
            .body(binary.clone()),
        client.post(sessions(&url)).body(binary),
        client
            .patch(session(&url, &id, ""))
            .header("content-type", MERGE_PATCH)
            .body(format!("{}{}", "[".repeat(100_000), "]".repeat(100_000))),
        client.get(format!(
            "{url}/v1/sessions/%FF%FE%FD%FC%FB%FA%F9%F8%F7%F6%F5"
        )),
        client.get(format!(
            "{url}/v1/sessions/%00%00%00%00%00%00%00%00%00%00%00"
        )),
        client.get(session(&url, &"A".repeat(16 * 1024), "")),
        client
            .put(session(&url, &id, ""))
            .header("if-match", "x".repeat(16 * 1024))
            .json(&json!({"data": {}})),
        client
            .put(session(&url, &id, ""))
            .header("if-match", invalid_utf8)
            .json(&json!({"data": {}})),
        client
            .post(sessions(&url))
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
        let code = answer.body["error"]["code"].as_str().unwrap_or("");
        assert!(
            !code.is_empty(),
            "garbage request {n}: no error code in {}",
            answer.text
        );
    }

    // Heads over --http-max-head-bytes (64 KiB): hyper answers 431 before
    // any handler runs (with no body) and closes the connection.
    let over_head_limit = [
        client
            .put(session(&url, &id, ""))
            .header("if-match", huge.as_str())
            .json(&json!({"data": {}})),
        client
            .post(sessions(&url))
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
        let status = raw_status(server.http, bytes).await;
        assert!((400..500).contains(&status), "raw garbage got {status}");
    }

    assert_eq!(call(client.get(format!("{url}/healthz"))).await.status, 200);
    let read = get(&url, &id).await;
    read.assert_session(200);
    assert_eq!(
        read.body["data"],
        json!({"a": 1}),
        "garbage changed nothing"
    );
    let text = metrics(&url).await;
    let statuses = label_values(&text, "sessiond_http_requests_total", "status");
    assert!(statuses.iter().any(|status| status == "400"), "{text}");
    assert!(
        statuses.iter().all(|status| !status.starts_with('5')),
        "a 5xx was answered: {statuses:?}"
    );
}

// ---------------------------------------------------------------- edge cases of the JSON and auth rules

#[tokio::test]
async fn data_that_a_write_accepted_can_be_merge_patched_later() {
    let server = Sessiond::start(&[]);
    let url = server.url();
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    for data in [deep.as_str(), r#""\ud800""#] {
        let body = format!(r#"{{"data": {data}}}"#);
        let answer = call(
            client()
                .post(sessions(&url))
                .header("content-type", "application/json")
                .body(body),
        )
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
        let patched = patch(&url, id, MERGE_PATCH, &json!({"k": 1}), None).await;
        patched.assert_session(200);
        assert_eq!(patched.body["data"], json!({"k": 1}));
    }
}

#[tokio::test]
async fn bodies_that_are_json_arrays_are_invalid_json() {
    let server = Sessiond::start(&[]);
    let url = server.url();
    let (id, _) = create_session(&url, json!({"kept": true})).await;
    let client = client();
    let requests = [
        client.post(sessions(&url)).json(&json!([{"a": 1}, 60])),
        client.put(session(&url, &id, "")).json(&json!([{"a": 1}])),
        client.post(session(&url, &id, "/touch")).json(&json!([5])),
    ];
    for request in requests {
        call(request).await.assert_error(400, "invalid_json");
    }
    let read = get(&url, &id).await;
    assert_eq!(read.body["data"], json!({"kept": true}));
    assert_eq!(read.body["ttl_secs"], json!(1800));
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let server = Sessiond::start(&["--auth-token", "s3cret-token"]);
    let url = server.url();
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let answer = call(
            client()
                .post(sessions(&url))
                .header("authorization", format!("{scheme} s3cret-token"))
                .json(&json!({})),
        )
        .await;
        assert_eq!(answer.status, 201, "scheme {scheme:?}: {}", answer.text);
    }
}
