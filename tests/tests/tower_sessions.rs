//! The tower-sessions integration as an app uses it: axum routers with the
//! README's one layer, `SessionManagerLayer::new(SessiondStore::new(client))`,
//! in this process, against real `sessiond` nodes.
//!
//! - The README setup works against a server with default flags (the two
//!   weeks tower-sessions asks for are capped at the server's `--max-ttl`),
//!   and the cookie's text is the session id an operator can look up.
//! - Two app instances serving 100 concurrent requests of one user, each
//!   setting its own key: every key lands (saves send only what changed).
//! - A slow request that loaded the session before a logout on another
//!   instance saves after it: the session stays gone.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::http::{Request, StatusCode, header};
use axum::routing::{get, post};
use serde_json::{Value, json};
use sessiond_client::{Client, SessionId, SessiondStore};
use sessiond_e2e::redis_support::{bounded, get as http_get, http, node_on};
use sessiond_e2e::{RedisServer, Sessiond, client_for};
use tower::ServiceExt;
use tower_sessions::{Session, SessionManagerLayer};

/// The README's adoption: one layer.
fn app(client: Client) -> Router {
    Router::new()
        .route("/set/{key}", get(set))
        .route("/get/{key}", get(read))
        .route("/slow/{key}", get(slow_set))
        .route("/logout", post(logout))
        .route("/prefs/{which}", get(set_prefs))
        .route("/login/{user}", post(login))
        .route("/cycle", post(cycle))
        .layer(SessionManagerLayer::new(SessiondStore::new(client)))
}

async fn set(Path(key): Path<String>, session: Session) -> StatusCode {
    // Load first and yield, so concurrent requests overlap.
    let _ = session.get::<Value>("seen").await;
    tokio::time::sleep(Duration::from_millis(fastrand::u64(5..40))).await;
    match session.insert(&key, true).await {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn read(Path(key): Path<String>, session: Session) -> String {
    let value: Option<Value> = session.get(&key).await.ok().flatten();
    value.unwrap_or(Value::Null).to_string()
}

async fn slow_set(Path(key): Path<String>, session: Session) -> StatusCode {
    let _ = session.get::<Value>("seen").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    match session.insert(&key, true).await {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Sets `prefs` to an object: all of it, or with a member dropped.
async fn set_prefs(Path(which): Path<String>, session: Session) -> StatusCode {
    let prefs = match which.as_str() {
        "all" => json!({"theme": "dark", "lang": "en", "font": {"size": 12, "face": "serif"}}),
        _ => json!({"theme": "dark", "font": {"size": 12}}),
    };
    match session.insert("prefs", prefs).await {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// A login: a fresh id, bound to `user`.
async fn login(Path(user): Path<String>, session: Session) -> StatusCode {
    let bound = async {
        session.cycle_id().await?;
        SessiondStore::bind_user(&session, &user).await
    };
    match bound.await {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// A fresh id for the session, as at a change of privilege.
async fn cycle(session: Session) -> StatusCode {
    let _ = session.get::<Value>("seen").await;
    match session.cycle_id().await {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn logout(session: Session) -> StatusCode {
    match session.flush().await {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// A request through `app`: its status, the `id` cookie it sets, its body.
async fn call(
    app: &Router,
    method: &str,
    path: &str,
    cookie: Option<&str>,
) -> (u16, Option<String>, String) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, format!("id={cookie}"));
    }
    let request = request.body(Body::empty()).expect("request");
    let response = bounded("the app", app.clone().oneshot(request))
        .await
        .expect("infallible");
    let status = response.status().as_u16();
    let cookie = response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find_map(|text| {
            text.split(';')
                .next()?
                .trim()
                .strip_prefix("id=")
                .map(str::to_owned)
        });
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, cookie, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_setup_works_against_a_default_server() {
    let node = Sessiond::start(&[]);
    let app = app(client_for(&[&node]).await);
    let (status, cookie, _) = call(&app, "GET", "/set/a", None).await;
    assert_eq!(status, 200);
    let cookie = cookie.expect("a session cookie");
    // The cookie's text is the session id, as the HTTP API knows it.
    let id: SessionId = cookie.parse().expect("the cookie is a session id");
    let http = http();
    let stored = http_get(&http, &node, &id.to_string()).await;
    assert_eq!(stored.status, 200, "{}", stored.text);
    let session = stored.session();
    assert_eq!(session.data, json!({"a": true}));
    // tower-sessions' two weeks, capped at the server's --max-ttl (24 h).
    assert_eq!(stored.json()["ttl_secs"], 86_400);
    let (status, _, body) = call(&app, "GET", "/get/a", Some(&cookie)).await;
    assert_eq!((status, body.as_str()), (200, "true"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_of_one_user_on_two_apps_keep_every_key() {
    const REQUESTS: usize = 100;
    let redis = RedisServer::start();
    let http = http();
    let nodes = [
        node_on(&http, &redis.url(), &[]).await,
        node_on(&http, &redis.url(), &[]).await,
    ];
    let apps = [
        app(client_for(&[&nodes[0], &nodes[1]]).await),
        app(client_for(&[&nodes[0], &nodes[1]]).await),
    ];
    let (status, cookie, _) = call(&apps[0], "GET", "/set/first", None).await;
    assert_eq!(status, 200);
    let cookie = cookie.expect("a session cookie");
    let requests = (0..REQUESTS).map(|n| {
        let (app, cookie) = (apps[n % 2].clone(), cookie.clone());
        tokio::spawn(async move {
            call(&app, "GET", &format!("/set/k{n}"), Some(&cookie))
                .await
                .0
        })
    });
    for (n, request) in requests.collect::<Vec<_>>().into_iter().enumerate() {
        assert_eq!(
            bounded("a request", request).await.expect("task"),
            200,
            "request {n}"
        );
    }
    let stored = http_get(&http, &nodes[0], &cookie).await.session();
    let data = stored.data.as_object().expect("an object").clone();
    let missing: Vec<usize> = (0..REQUESTS)
        .filter(|n| data.get(&format!("k{n}")) != Some(&json!(true)))
        .collect();
    assert_eq!(
        missing,
        Vec::<usize>::new(),
        "keys lost to concurrent saves"
    );
    assert_eq!(data.len(), REQUESTS + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_after_a_logout_elsewhere_does_not_bring_the_session_back() {
    let redis = RedisServer::start();
    let http = http();
    let nodes = [
        node_on(&http, &redis.url(), &[]).await,
        node_on(&http, &redis.url(), &[]).await,
    ];
    let apps = [
        app(client_for(&[&nodes[0], &nodes[1]]).await),
        app(client_for(&[&nodes[0], &nodes[1]]).await),
    ];
    let (_, cookie, _) = call(&apps[0], "GET", "/set/a", None).await;
    let cookie = cookie.expect("a session cookie");
    let slow = {
        let (app, cookie) = (apps[0].clone(), cookie.clone());
        tokio::spawn(async move { call(&app, "GET", "/slow/late", Some(&cookie)).await.0 })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (status, _, _) = call(&apps[1], "POST", "/logout", Some(&cookie)).await;
    assert_eq!(status, 200);
    assert_eq!(bounded("the slow request", slow).await.expect("task"), 200);
    for node in &nodes {
        let stored = http_get(&http, node, &cookie).await;
        assert_eq!(
            stored.status, 404,
            "the logged-out session came back: {}",
            stored.text
        );
    }
    // The old cookie is dead: the app sees an empty session.
    let (_, _, body) = call(&apps[0], "GET", "/get/a", Some(&cookie)).await;
    assert_eq!(body, "null");
}

/// An object value that loses members in a request loses them in the
/// store: the save's merge patch sent the new object whole, which the
/// server merged into the stored one, keeping the members dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_dropped_from_an_object_are_dropped_from_the_store() {
    let node = Sessiond::start(&[]);
    let app = app(client_for(&[&node]).await);
    let (status, cookie, _) = call(&app, "GET", "/prefs/all", None).await;
    assert_eq!(status, 200);
    let cookie = cookie.expect("a session cookie");
    let (status, _, _) = call(&app, "GET", "/prefs/fewer", Some(&cookie)).await;
    assert_eq!(status, 200);
    let stored = http_get(&http(), &node, &cookie).await;
    assert_eq!(stored.status, 200, "{}", stored.text);
    assert_eq!(
        stored.session().data,
        json!({"prefs": {"theme": "dark", "font": {"size": 12}}})
    );
}

/// One request removes an object value while another, which loaded the
/// session before, changes a member of it and saves after: the later save
/// wins for the key, whole. Sent as a patch of the changed members, it made
/// the key hold only that member, an object neither request wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_removed_by_one_request_and_changed_by_another_holds_the_later_whole() {
    use tower_sessions::SessionStore;
    let node = Sessiond::start(&[]);
    let client = client_for(&[&node]).await;
    let store = SessiondStore::new(client.clone());
    let prefs = json!({"theme": "light", "lang": "en"});
    let made = bounded("create", client.create(&json!({ "prefs": prefs }), None))
        .await
        .expect("create");
    let id: tower_sessions::session::Id = made.id.to_string().parse().expect("an id");
    let load = || async {
        bounded("load", store.load(&id))
            .await
            .expect("load")
            .expect("the session")
    };
    let (mut first, mut second) = (load().await, load().await);
    first.data.remove("prefs");
    bounded("save", store.save(&first)).await.expect("save");
    second
        .data
        .insert("prefs".into(), json!({"theme": "dark", "lang": "en"}));
    bounded("save", store.save(&second)).await.expect("save");
    let stored = bounded("get", client.get::<Value>(&made.id))
        .await
        .expect("get");
    assert_eq!(
        stored.data,
        json!({"prefs": {"theme": "dark", "lang": "en"}})
    );
}

/// A session bound to its user at a login keeps that user when a later
/// request cycles its id (it was created anew without one: gone from the
/// user's listing, out of reach of "sign out everywhere").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_cycle_of_the_id_keeps_the_sessions_user() {
    let node = Sessiond::start(&[]);
    let client = client_for(&[&node]).await;
    let app = app(client.clone());
    let (status, cookie, _) = call(&app, "GET", "/set/cart", None).await;
    assert_eq!(status, 200);
    let (status, logged_in, _) = call(&app, "POST", "/login/alice", cookie.as_deref()).await;
    assert_eq!(status, 200);
    let logged_in = logged_in.expect("a cookie at the login");
    let (status, cycled, _) = call(&app, "POST", "/cycle", Some(&logged_in)).await;
    assert_eq!(status, 200);
    let cycled = cycled.expect("a cookie at the cycle");
    assert_ne!(cycled, logged_in, "the id changed");
    let listed: Vec<String> = bounded("the listing", client.list_user_sessions("alice"))
        .await
        .expect("list alice's sessions")
        .iter()
        .map(|info| info.id.to_string())
        .collect();
    assert_eq!(
        listed,
        std::slice::from_ref(&cycled),
        "alice's sessions after the cycle"
    );
    let stored = http_get(&http(), &node, &cycled).await;
    assert_eq!(stored.json()["user"], "alice", "{}", stored.text);
    assert_eq!(
        stored.json()["data"],
        json!({"cart": true}),
        "{}",
        stored.text
    );
}

/// A save that replaces an object value writes back the keys it did not
/// change as they were stored (they went through `serde_json::Value`: a
/// large integer became a float, `1e2` became `100.0`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_a_save_does_not_change_keep_their_stored_text() {
    let node = Sessiond::start(&[]);
    let app = app(client_for(&[&node]).await);
    let http = http();
    let created = bounded(
        "the create",
        http.post(format!("{}/v1/sessions", node.url()))
            .header("content-type", "application/json")
            .body(r#"{"data":{"big":12345678901234567890123,"f":1e2}}"#)
            .send(),
    )
    .await
    .expect("the create answered");
    assert_eq!(created.status(), 201);
    let created: Value = bounded("the body", created.json()).await.expect("json");
    let id = created["id"].as_str().expect("id").to_owned();
    let (status, _, _) = call(&app, "GET", "/prefs/all", Some(&id)).await;
    assert_eq!(status, 200);
    let stored = http_get(&http, &node, &id).await;
    assert_eq!(stored.status, 200, "{}", stored.text);
    for kept in [r#""big":12345678901234567890123"#, r#""f":1e2"#] {
        assert!(stored.text.contains(kept), "{kept} not in {}", stored.text);
    }
    assert_eq!(stored.json()["data"]["prefs"]["theme"], "dark");
}
