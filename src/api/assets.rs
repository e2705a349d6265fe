//! The demo page (`/demo/`) and the browser API module (`/js/`), built into
//! the binary so a fresh `cargo run --release` serves them with nothing
//! else installed.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use super::SharedState;

const DEMO_HTML: &str = include_str!("../../js-api/demo/index.html");
const DEMO_JS: &str = include_str!("../../js-api/demo/demo.js");
const DEMO_CSS: &str = include_str!("../../js-api/demo/demo.css");
const API_JS: &str = include_str!("../../js-api/gateway.js");
const API_TYPES: &str = include_str!("../../js-api/gateway.d.ts");

/// The page may talk only to the gateway that served it and play media streams.
const DEMO_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; media-src 'self' mediastream: blob:; img-src 'self' data:; \
     frame-ancestors 'none'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DEMO_CSP),
    );
    r
}

pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/demo/") }))
        .route("/demo", get(|| async { Redirect::permanent("/demo/") }))
        .route(
            "/demo/",
            get(|| async { asset(DEMO_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/demo/demo.js",
            get(|| async { asset(DEMO_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/demo/demo.css",
            get(|| async { asset(DEMO_CSS, "text/css; charset=utf-8") }),
        )
        .route(
            "/js/gateway.js",
            get(|| async { asset(API_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/js/gateway.d.ts",
            get(|| async { asset(API_TYPES, "text/plain; charset=utf-8") }),
        )
}
