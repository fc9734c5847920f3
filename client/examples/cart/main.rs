//! A stateless shop: an axum app that keeps each visitor's cart and visit
//! counter in sessiond through tower-sessions, and holds no state of its
//! own. Run several copies behind `sessiond balance` and kill any of them:
//! nobody loses their cart.
//!
//! ```text
//! cargo run -p sessiond-client --features tower-sessions --example cart -- \
//!     --listen 127.0.0.1:3000 --sessiond 127.0.0.1:7701 --name app-1
//! curl -c jar -b jar localhost:3000/            # visits: 1, 2, 3...
//! curl -c jar -b jar -X POST localhost:3000/cart/apple
//! curl -c jar -b jar -X POST localhost:3000/login/alice   # new session id
//! ```
//!
//! A visit and a cart item count once per request, however often the
//! request is retried: `sessiond balance` replays a GET whose app died
//! mid-way, and gives every request an `X-Request-Id` that stays the same on
//! a retry (a client retrying a failed POST sends the same id again). The
//! session remembers the last request id that counted.
//!
//! It also follows sessiond's event log and logs every session that ends
//! (`session ended: signed out due to inactivity`), resuming after a
//! restart from the cursor kept in `--events-cursor-file`.

mod session_log;

use std::net::SocketAddr;

use anyhow::Context;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use serde_json::json;
use sessiond_client::{Client, SessiondStore};
use tower_sessions::cookie::SameSite;
use tower_sessions::{Expiry, Session, SessionManagerLayer};

/// The cart app's flags.
#[derive(Debug, Parser)]
struct Args {
    /// Where the app listens.
    #[arg(long, env = "APP_LISTEN", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// sessiond nodes (binary protocol), comma separated.
    #[arg(
        long,
        env = "APP_SESSIOND",
        default_value = "127.0.0.1:7701",
        value_delimiter = ','
    )]
    sessiond: Vec<String>,
    /// sessiond's auth token, if it has one.
    #[arg(long, env = "SESSIOND_AUTH_TOKEN", hide_env_values = true)]
    auth_token: Option<String>,
    /// This instance's name, reported in every response.
    #[arg(long, env = "APP_NAME", default_value = "app")]
    name: String,
    /// Mark the session cookie Secure (serve over HTTPS).
    #[arg(long, env = "APP_SECURE_COOKIE")]
    secure_cookie: bool,
    /// Idle minutes before a session expires.
    #[arg(long, env = "APP_SESSION_MINUTES", default_value_t = 30,
          value_parser = clap::value_parser!(i64).range(1..))]
    session_minutes: i64,
    /// Where the app keeps its place in sessiond's event log, so a restart
    /// resumes there (without it, it follows from its start on).
    #[arg(long, env = "APP_EVENTS_CURSOR_FILE")]
    events_cursor_file: Option<std::path::PathBuf>,
    /// Check the flags, print them and exit without serving.
    #[arg(long)]
    check_config: bool,
}

/// What handlers share: this instance's name, and the sessiond client
/// (for "sign out everywhere").
#[derive(Clone)]
struct Instance(std::sync::Arc<str>, Client);

const VISITS: &str = "visits";
const CART: &str = "cart";
const USER: &str = "user";
/// The last request that counted a visit, and the count it gave.
const LAST_VISIT: &str = "last_visit";
/// The latest requests that added a cart item (at most [`RECENT_ADDS`]).
const ADDED_BY: &str = "added_by";
/// Requests remembered in [`ADDED_BY`]: a retry of one of them, even
/// after later requests, adds nothing.
const RECENT_ADDS: usize = 16;

/// A request that changed the session, remembered so a retry of it does
/// not change it again.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Counted {
    request: String,
    visits: u64,
}

/// The request's `X-Request-Id`, if it has one.
fn request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if args.check_config {
        println!(
            "configuration ok: listen {}, sessiond {:?}, name {}, secure cookie {}, {} min sessions",
            args.listen, args.sessiond, args.name, args.secure_cookie, args.session_minutes
        );
        return Ok(());
    }
    let mut builder = Client::builder().nodes(args.sessiond.clone());
    if let Some(token) = &args.auth_token {
        builder = builder.auth_token(token.clone());
    }
    let client = builder.build().await.context("cannot reach sessiond")?;
    tokio::spawn(session_log::follow(
        client.clone(),
        args.events_cursor_file.clone(),
    ));
    let sessions = SessionManagerLayer::new(SessiondStore::new(client.clone()))
        .with_name("sid")
        .with_http_only(true)
        .with_same_site(SameSite::Lax)
        .with_secure(args.secure_cookie)
        .with_expiry(Expiry::OnInactivity(time::Duration::minutes(
            args.session_minutes,
        )));
    let app = Router::new()
        .route("/", get(visit))
        .route("/cart/{item}", post(add_to_cart))
        .route("/login/{user}", post(login))
        .route("/logout", post(logout))
        .route("/logout-everywhere", post(logout_everywhere))
        .layer(sessions)
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(Instance(args.name.as_str().into(), client));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(local = %listener.local_addr()?, name = %args.name, "cart app listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM (`docker compose stop` sends SIGTERM).
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// Turns a session-store failure into a 503 the user can retry.
fn unavailable(err: impl std::fmt::Display) -> Response {
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        format!("session store unavailable: {err}\n"),
    )
        .into_response()
}

fn served_by(instance: &Instance, body: serde_json::Value) -> Response {
    let mut response = Json(body).into_response();
    if let Ok(name) = HeaderValue::from_str(&instance.0) {
        response.headers_mut().insert("x-served-by", name);
    }
    response
}

/// `GET /`: counts the visit (once per request id) and shows the session.
async fn visit(State(instance): State<Instance>, headers: HeaderMap, session: Session) -> Response {
    let request = request_id(&headers);
    let last: Option<Counted> = match session.get(LAST_VISIT).await {
        Ok(last) => last,
        Err(err) => return unavailable(err),
    };
    let visits = match (last, &request) {
        // A retry of a visit already counted: show what it counted.
        (Some(last), Some(request)) if &last.request == request => last.visits,
        _ => {
            let visits = match session.get::<u64>(VISITS).await {
                Ok(visits) => visits.unwrap_or(0) + 1,
                Err(err) => return unavailable(err),
            };
            if let Err(err) = session.insert(VISITS, visits).await {
                return unavailable(err);
            }
            if let Some(request) = request {
                let counted = Counted { request, visits };
                if let Err(err) = session.insert(LAST_VISIT, counted).await {
                    return unavailable(err);
                }
            }
            visits
        }
    };
    let cart: Vec<String> = session.get(CART).await.ok().flatten().unwrap_or_default();
    let user: Option<String> = session.get(USER).await.ok().flatten();
    served_by(
        &instance,
        json!({"instance": &*instance.0, "visits": visits, "cart": cart, "user": user}),
    )
}

/// `POST /cart/{item}`: adds an item to the cart (once per request id).
async fn add_to_cart(
    State(instance): State<Instance>,
    Path(item): Path<String>,
    headers: HeaderMap,
    session: Session,
) -> Response {
    let mut cart: Vec<String> = match session.get(CART).await {
        Ok(cart) => cart.unwrap_or_default(),
        Err(err) => return unavailable(err),
    };
    let request = request_id(&headers);
    let mut added_by: Vec<String> = session
        .get(ADDED_BY)
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    if request
        .as_ref()
        .is_none_or(|request| !added_by.contains(request))
    {
        cart.push(item);
        if let Err(err) = session.insert(CART, &cart).await {
            return unavailable(err);
        }
        if let Some(request) = request {
            added_by.push(request);
            let dropped = added_by.len().saturating_sub(RECENT_ADDS);
            added_by.drain(..dropped);
            if let Err(err) = session.insert(ADDED_BY, added_by).await {
                return unavailable(err);
            }
        }
    }
    served_by(&instance, json!({"instance": &*instance.0, "cart": cart}))
}

/// `POST /login/{user}`: a new session id for the same data (no session
/// fixation) that belongs to the user (listed and revoked with the user's
/// other sessions), and the user remembered in the session.
async fn login(
    State(instance): State<Instance>,
    Path(user): Path<String>,
    session: Session,
) -> Response {
    // A visitor's stored session gets a new id. One without (no cookie, or
    // a cookie whose session ended: the load below forgets its id) gets a
    // fresh id when it is first stored, so there is nothing to fix; cycling
    // it would delete a made-up id on the node that owns it, failing the
    // login while that node is down.
    if let Err(err) = session.get::<String>(USER).await {
        return unavailable(err);
    }
    if session.id().is_some()
        && let Err(err) = session.cycle_id().await
    {
        return unavailable(err);
    }
    if let Err(err) = SessiondStore::bind_user(&session, &user).await {
        return unavailable(err);
    }
    if let Err(err) = session.insert(USER, &user).await {
        return unavailable(err);
    }
    served_by(&instance, json!({"instance": &*instance.0, "user": user}))
}

/// `POST /logout-everywhere`: signs the user out of every other device
/// (every other session of the user is deleted; this one stays).
async fn logout_everywhere(State(instance): State<Instance>, session: Session) -> Response {
    let user: Option<String> = match session.get(USER).await {
        Ok(user) => user,
        Err(err) => return unavailable(err),
    };
    let (Some(user), Some(id)) = (user, session.id()) else {
        let body = json!({"instance": &*instance.0, "error": "not logged in"});
        let mut response = served_by(&instance, body);
        *response.status_mut() = axum::http::StatusCode::FORBIDDEN;
        return response;
    };
    let current = SessiondStore::session_id(&id);
    match instance.1.revoke_user_sessions(&user, Some(&current)).await {
        Ok(revoked) => served_by(
            &instance,
            json!({"instance": &*instance.0, "user": user, "revoked": revoked}),
        ),
        Err(err) => unavailable(err),
    }
}

/// `POST /logout`: forgets the session.
async fn logout(State(instance): State<Instance>, session: Session) -> Response {
    if let Err(err) = session.flush().await {
        return unavailable(err);
    }
    served_by(&instance, json!({"instance": &*instance.0, "user": null}))
}
