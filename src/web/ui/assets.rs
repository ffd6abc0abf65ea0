//! The scripts and styles of the web view, embedded in the binary.

use axum::extract::Path as UrlPath;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

const APP_CSS: &str = include_str!("../assets/app.css");
const APP_JS: &str = include_str!("../assets/app.js");
const PLAYER_JS: &str = include_str!("../assets/vendor/asciinema-player.min.js");
const PLAYER_CSS: &str = include_str!("../assets/vendor/asciinema-player.css");

/// `GET /ui/static/{name}`: the embedded scripts and styles.
pub async fn asset(UrlPath(name): UrlPath<String>) -> Response {
    let (content_type, body) = match name.as_str() {
        "app.css" => ("text/css; charset=utf-8", APP_CSS),
        "app.js" => ("text/javascript; charset=utf-8", APP_JS),
        "asciinema-player.min.js" => ("text/javascript; charset=utf-8", PLAYER_JS),
        "asciinema-player.css" => ("text/css; charset=utf-8", PLAYER_CSS),
        _ => return (StatusCode::NOT_FOUND, "not found\n").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}
