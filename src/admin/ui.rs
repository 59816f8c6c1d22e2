//! `/ui/`: the dashboard (SPEC §14), files compiled into the binary, so it needs nothing at
//! run time — no CDN, no Node — and shows exactly what this version of the admin API says.
//!
//! The files hold no data: the page asks for the admin key and reads everything through
//! `/admin/*` and `/metrics` with it, so without the key it shows nothing. They are served
//! with a content security policy that lets the page run its own script and talk to this
//! listener only.

use http::{header, Response, StatusCode};

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");

const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                      img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
                      form-action 'none'; frame-ancestors 'none'";

/// The answer for a path under `/ui`, or `None` when it is not the dashboard's.
pub fn serve(path: &str) -> Option<Response<Vec<u8>>> {
    let (body, kind) = match path {
        // Relative, as every path the page uses: behind a proxy that adds a path prefix the
        // page still finds its files and the admin API.
        "/ui" => return Some(redirect("ui/")),
        "/ui/" | "/ui/index.html" => (INDEX, "text/html; charset=utf-8"),
        "/ui/app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/ui/app.css" => (STYLE, "text/css; charset=utf-8"),
        _ if path.starts_with("/ui/") => return Some(not_found()),
        _ => return None,
    };
    Some(
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, kind)
            .header(header::CONTENT_LENGTH, body.len())
            .header(header::CACHE_CONTROL, "no-cache")
            .header(header::CONTENT_SECURITY_POLICY, POLICY)
            .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
            .header(header::REFERRER_POLICY, "no-referrer")
            .body(body.as_bytes().to_vec())
            .expect("static parts are valid"),
    )
}

fn redirect(to: &'static str) -> Response<Vec<u8>> {
    Response::builder()
        .status(StatusCode::MOVED_PERMANENTLY)
        .header(header::LOCATION, to)
        .header(header::CONTENT_LENGTH, 0)
        .body(Vec::new())
        .expect("static parts are valid")
}

fn not_found() -> Response<Vec<u8>> {
    let body = b"not found".to_vec();
    Response::builder()
        .status(StatusCode::NOT_FOUND)
        .header(header::CONTENT_TYPE, "text/plain")
        .header(header::CONTENT_LENGTH, body.len())
        .body(body)
        .expect("static parts are valid")
}
