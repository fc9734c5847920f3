//! End-to-end test of the `cart` example (axum + tower-sessions through
//! `SessiondStore`): the real example binary in front of a real `sessiond`
//! node, driven by an HTTP client with a cookie jar. Covers visit counting,
//! the cart, the session cookie's attributes, session fixation protection
//! on login, and that the app keeps no state of its own.

use std::time::Duration;

use reqwest::header::{COOKIE, SET_COOKIE};
use serde_json::{Value, json};
use sessiond_client::SessionId;
use sessiond_e2e::{CartApp, Sessiond, client_for, http_client, http_client_builder};

/// Bound of any single HTTP exchange.
const STEP: Duration = Duration::from_secs(30);

fn plain_client() -> reqwest::Client {
    http_client(STEP)
}

fn cookie_client() -> reqwest::Client {
    http_client_builder(STEP)
        .cookie_store(true)
        .build()
        .expect("HTTP client with a cookie jar")
}

/// An answer, read whole.
struct Answer {
    status: u16,
    served_by: Option<String>,
    set_cookies: Vec<String>,
    body: Value,
}

impl Answer {
    /// The `sid` value this answer sets, if it sets one.
    fn sid(&self) -> Option<String> {
        self.set_cookies.iter().find_map(|cookie| {
            let pair = cookie.split(';').next()?.trim();
            pair.strip_prefix("sid=").map(str::to_owned)
        })
    }
}

async fn send(request: reqwest::RequestBuilder) -> Answer {
    let response = tokio::time::timeout(STEP, request.send())
        .await
        .expect("the app did not answer in time")
        .expect("the request failed");
    let status = response.status().as_u16();
    let served_by = response
        .headers()
        .get("x-served-by")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let set_cookies = response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .map(str::to_owned)
        .collect();
    let text = response.text().await.expect("the body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer {
        status,
        served_by,
        set_cookies,
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cart_app_keeps_its_sessions_in_sessiond() {
    let node = Sessiond::start(&[]);
    let app = CartApp::start(&[&node], "app-x").await;
    let browser = cookie_client();
    let home = format!("{}/", app.url);

    // Three visits: the counter lives in the session.
    let first = send(browser.get(&home)).await;
    assert_eq!(first.status, 200, "{}", app.log());
    assert_eq!(first.served_by.as_deref(), Some("app-x"));
    assert_eq!(
        first.body,
        json!({"instance": "app-x", "visits": 1, "cart": [], "user": null})
    );
    let sid_cookie = first
        .set_cookies
        .iter()
        .find(|cookie| cookie.starts_with("sid="))
        .unwrap_or_else(|| panic!("no sid cookie in {:?}", first.set_cookies));
    let attributes: Vec<String> = sid_cookie
        .split(';')
        .skip(1)
        .map(|attribute| attribute.trim().to_ascii_lowercase())
        .collect();
    assert!(attributes.iter().any(|a| a == "httponly"), "{sid_cookie}");
    assert!(
        attributes.iter().any(|a| a == "samesite=lax"),
        "{sid_cookie}"
    );
    assert!(!attributes.iter().any(|a| a == "secure"), "{sid_cookie}");
    let first_sid = first.sid().expect("a sid value");
    assert!(!first_sid.is_empty());

    for visits in 2..=3 {
        let answer = send(browser.get(&home)).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.served_by.as_deref(), Some("app-x"));
        assert_eq!(answer.body["visits"], json!(visits));
    }

    // The cart.
    let apple = send(browser.post(format!("{}/cart/apple", app.url))).await;
    assert_eq!(apple.status, 200);
    assert_eq!(apple.body["cart"], json!(["apple"]));
    let pear = send(browser.post(format!("{}/cart/pear", app.url))).await;
    assert_eq!(pear.body["cart"], json!(["apple", "pear"]));
    let seen = send(browser.get(&home)).await;
    assert_eq!(seen.body["cart"], json!(["apple", "pear"]));
    assert_eq!(seen.body["visits"], json!(4));

    // Login moves the session to a new id (no session fixation).
    let login = send(browser.post(format!("{}/login/alice", app.url))).await;
    assert_eq!(login.status, 200);
    assert_eq!(login.body["user"], json!("alice"));
    let new_sid = login.sid().expect("login sets a new sid cookie");
    assert_ne!(new_sid, first_sid, "login must change the session id");

    // Whoever kept the old id gets a brand-new, empty session.
    let stranger = plain_client();
    let stale = send(
        stranger
            .get(&home)
            .header(COOKIE, format!("sid={first_sid}")),
    )
    .await;
    assert_eq!(stale.status, 200);
    assert_eq!(
        stale.body,
        json!({"instance": "app-x", "visits": 1, "cart": [], "user": null})
    );
    let stale_sid = stale.sid().expect("a fresh session gets a cookie");
    assert_ne!(stale_sid, first_sid);
    assert_ne!(stale_sid, new_sid);

    // The new id still has everything, plus the user.
    let after = send(browser.get(&home)).await;
    assert_eq!(
        after.body,
        json!({"instance": "app-x", "visits": 5, "cart": ["apple", "pear"], "user": "alice"})
    );

    // sessiond holds exactly the logged-in session and the stranger's.
    let client = client_for(&[&node]).await;
    let stats = client.stats(&node.tcp.to_string()).await.unwrap();
    assert_eq!(
        stats.sessions, 2,
        "the old session must be deleted on login"
    );

    // The app is stateless: kill it, start another instance, same cart.
    drop(app);
    let other = CartApp::start(&[&node], "app-y").await;
    let elsewhere = send(browser.get(format!("{}/", other.url))).await;
    assert_eq!(elsewhere.served_by.as_deref(), Some("app-y"));
    assert_eq!(
        elsewhere.body,
        json!({"instance": "app-y", "visits": 6, "cart": ["apple", "pear"], "user": "alice"})
    );
}

/// An add to the cart sent again with its `X-Request-Id` adds nothing, also
/// after later adds (a browser's retry of a request whose answer it lost):
/// only the last request was remembered, so such a retry added the item
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_retried_after_later_adds_is_counted_once() {
    let node = Sessiond::start(&[]);
    let app = CartApp::start(&[&node], "app-x").await;
    let browser = cookie_client();
    let add = |item: &str, request: &str| {
        browser
            .post(format!("{}/cart/{item}", app.url))
            .header("x-request-id", request)
    };
    assert_eq!(
        send(add("apple", "r1")).await.body["cart"],
        json!(["apple"])
    );
    assert_eq!(
        send(add("pear", "r2")).await.body["cart"],
        json!(["apple", "pear"])
    );
    let retried = send(add("apple", "r1")).await;
    assert_eq!(retried.status, 200, "{}", app.log());
    assert_eq!(retried.body["cart"], json!(["apple", "pear"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_binds_the_user_and_signing_out_everywhere_ends_the_other_devices() {
    let node = Sessiond::start(&[]);
    let app = CartApp::start(&[&node], "app-u").await;
    let (laptop, phone) = (cookie_client(), cookie_client());
    let http = plain_client();
    for device in [&laptop, &phone] {
        assert_eq!(send(device.get(format!("{}/", app.url))).await.status, 200);
        let login = send(device.post(format!("{}/login/ivan", app.url))).await;
        assert_eq!(login.status, 200, "{}", app.log());
        assert_eq!(
            send(device.get(format!("{}/", app.url))).await.body["user"],
            "ivan"
        );
    }
    let listing = |http: reqwest::Client| {
        let url = format!("{}/v1/users/ivan/sessions", node.url());
        async move {
            let answer = send(http.get(url)).await;
            assert_eq!(answer.status, 200);
            answer.body["sessions"].as_array().map_or(0, Vec::len)
        }
    };
    assert_eq!(listing(http.clone()).await, 2, "both devices are signed in");

    let out = send(laptop.post(format!("{}/logout-everywhere", app.url))).await;
    assert_eq!(out.status, 200, "{}", app.log());
    assert_eq!(out.body["revoked"], 1);
    assert_eq!(listing(http.clone()).await, 1, "only the laptop is left");
    let laptop_home = send(laptop.get(format!("{}/", app.url))).await;
    assert_eq!(
        laptop_home.body["user"], "ivan",
        "the laptop stays signed in"
    );
    let phone_home = send(phone.get(format!("{}/", app.url))).await;
    assert_eq!(
        phone_home.body["user"],
        Value::Null,
        "the phone is signed out"
    );
    assert_eq!(phone_home.body["visits"], 1, "with a fresh session");
}

/// Without Redis, with one of two nodes down, a login of a visitor without
/// a stored session (no cookie, or one whose session ended) works every
/// time (it cycled the made-up id of a session never stored, whose delete
/// failed when that id's node was the one down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_without_a_session_works_with_a_node_down() {
    let up = Sessiond::start(&[]);
    let mut down = Sessiond::start(&[]);
    let app = CartApp::start(&[&up, &down], "app-d").await;
    // Cookies of sessions that ended (never stored here), owned by the node
    // that stays up: a login loads them, finds nothing, and starts afresh.
    let placement = client_for(&[&up, &down]).await;
    let stale: Vec<String> = std::iter::repeat_with(SessionId::random)
        .filter(|id| placement.owner_of(id) == up.tcp.to_string())
        .take(6)
        .map(|id| id.to_string())
        .collect();
    down.kill();
    let http = plain_client();
    for attempt in 0..12 {
        let mut request = http.post(format!("{}/login/olga", app.url));
        // Every other login carries a stale cookie.
        if let Some(id) = (attempt % 2 == 1).then(|| &stale[attempt / 2]) {
            request = request.header(COOKIE, format!("sid={id}"));
        }
        let login = send(request).await;
        assert_eq!(
            login.status,
            200,
            "attempt {attempt}: {:?}\n{}",
            login.body,
            app.log()
        );
        assert!(
            login.sid().is_some(),
            "attempt {attempt}: no session cookie"
        );
    }
    let listed = send(http.get(format!("{}/v1/users/olga/sessions", up.url()))).await;
    assert_eq!(listed.body["sessions"].as_array().map_or(0, Vec::len), 12);
}

/// How many times the app logged that `session` expired.
fn expiries_logged(app: &CartApp, session: &str) -> usize {
    app.log_lines()
        .iter()
        .filter(|line| {
            line.contains("session ended: signed out due to inactivity") && line.contains(session)
        })
        .count()
}

/// Waits (bounded) until the app logged `session`'s expiry.
async fn until_expiry_logged(app: &CartApp, session: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while expiries_logged(app, session) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no expiry of {session} logged:\n{}",
            app.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn short_session(node: &Sessiond, user: &str) -> String {
    let made = send(
        plain_client()
            .post(format!("{}/v1/sessions", node.url()))
            .json(&json!({"ttl_secs": 1, "user": user})),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    made.body["id"].as_str().expect("an id").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_logs_each_expired_session_once_even_across_its_own_restart() {
    let node = Sessiond::start(&["--sweep-interval", "50ms"]);
    let dir = tempfile::tempdir().expect("a temp dir");
    let cursor_file = dir.path().join("events.cursor");
    let cursor_arg = cursor_file.to_str().expect("a UTF-8 path");
    let args = ["--events-cursor-file", cursor_arg];
    let app = CartApp::start_with(&[&node], "app-e", &args).await;
    let first = short_session(&node, "ann").await;
    until_expiry_logged(&app, &first).await;
    let logged = app
        .log_lines()
        .into_iter()
        .find(|line| line.contains(&first) && line.contains("ann"));
    let logged = logged.unwrap_or_else(|| panic!("no user with the expiry:\n{}", app.log()));
    // Killed once the cursor past the expiry is saved: killed between its
    // report and the save, the app reports it again (at least once).
    let cursor = logged
        .split_once("cursor=")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no cursor in {logged}"))
        .to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&cursor_file).ok().as_deref() != Some(cursor.as_str()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cursor {cursor} was never saved"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(app);
    // While the app is down a session expires: the restarted app learns of
    // it from where it stopped, and does not report the first one again.
    let second = short_session(&node, "bob").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let app = CartApp::start_with(&[&node], "app-e", &args).await;
    until_expiry_logged(&app, &second).await;
    assert_eq!(expiries_logged(&app, &second), 1);
    assert_eq!(expiries_logged(&app, &first), 0, "{}", app.log());
}
