//! The upstreams API on the admin listener:
//!
//! | request | answer |
//! |---|---|
//! | `GET /upstreams` | 200 `{"queued": n, "upstreams": [...]}` (as `/stats.json`) |
//! | `POST /upstreams` `{"url": "http://host:port"}` | 201 added (slow-starting), 409 `already_present`, 400 `bad_upstream` |
//! | `DELETE /upstreams/{host:port}` | 202 draining (removed once idle), 404 `unknown_upstream` |
//!
//! Every request needs `Authorization: Bearer <--admin-token>`; without a
//! token configured, the API answers only on a loopback admin listener
//! (403 `admin_token_required` elsewhere).

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{delete, get};
use serde::Deserialize;
use serde_json::json;

use super::admin_state::{AdminState, stats};
use super::membership::Change;
use super::upstream::UpstreamUrl;
use crate::secret::bearer_token;

/// The `/upstreams` routes, behind the token check.
pub fn routes(state: AdminState) -> Router<AdminState> {
    Router::new()
        .route("/upstreams", get(list).post(add))
        .route("/upstreams/{authority}", delete(drain))
        .route_layer(middleware::from_fn_with_state(state, authorize))
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({"error": {"code": code, "message": message.into()}});
    (status, Json(body)).into_response()
}

async fn authorize(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let auth = &state.auth;
    match &auth.token {
        Some(token) => {
            let given = bearer_token(request.headers()).unwrap_or("");
            if !token.matches(given) {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "a valid Authorization: Bearer <--admin-token> is required",
                );
            }
        }
        None if !auth.loopback => {
            return error(
                StatusCode::FORBIDDEN,
                "admin_token_required",
                "the upstreams API needs --admin-token on a non-loopback admin listener",
            );
        }
        None => {}
    }
    next.run(request).await
}

async fn list(State(state): State<AdminState>) -> Response {
    Json(stats(state.membership.pool())).into_response()
}

#[derive(Deserialize)]
struct AddRequest {
    url: String,
}

async fn add(State(state): State<AdminState>, body: axum::body::Bytes) -> Response {
    let Ok(AddRequest { url }) = serde_json::from_slice::<AddRequest>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the body must be {\"url\": \"http://host:port\"}",
        );
    };
    let url = match UpstreamUrl::parse(url.trim()) {
        Ok(url) => url,
        Err(err) => return error(StatusCode::BAD_REQUEST, "bad_upstream", err.to_string()),
    };
    match state.membership.add(&url) {
        Change::Added => (
            StatusCode::CREATED,
            Json(json!({"url": url.to_string(), "state": "active"})),
        )
            .into_response(),
        _ => error(
            StatusCode::CONFLICT,
            "already_present",
            format!("{url} is an upstream already"),
        ),
    }
}

async fn drain(State(state): State<AdminState>, Path(authority): Path<String>) -> Response {
    let url = match UpstreamUrl::parse(&format!("http://{authority}")) {
        Ok(url) => url,
        Err(err) => return error(StatusCode::BAD_REQUEST, "bad_upstream", err.to_string()),
    };
    match state.membership.drain(&url) {
        Change::Unknown => error(
            StatusCode::NOT_FOUND,
            "unknown_upstream",
            format!("{url} is not an upstream"),
        ),
        _ => (
            StatusCode::ACCEPTED,
            Json(json!({"url": url.to_string(), "state": "draining"})),
        )
            .into_response(),
    }
}
