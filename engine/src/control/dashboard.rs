//! The dashboard: one page and its assets, embedded in the binary (no CDN, no network).
//!
//! The page runs under a strict Content-Security-Policy: scripts and styles only from
//! this port, no inline code, connections only back to this port (the page's own
//! WebSocket). Charts are drawn by uPlot 1.6.32 (MIT, `assets/uPlot.LICENSE`), vendored
//! from its npm package.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// No inline script or style, nothing from elsewhere, no framing, no forms.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// Name, content type, bytes.
const ASSETS: [(&str, &str, &[u8]); 5] = [
    ("index.html", "text/html; charset=utf-8", include_bytes!("assets/index.html")),
    ("app.js", "text/javascript; charset=utf-8", include_bytes!("assets/app.js")),
    ("app.css", "text/css; charset=utf-8", include_bytes!("assets/app.css")),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/uPlot.iife.min.js"),
    ),
    ("uPlot.min.css", "text/css; charset=utf-8", include_bytes!("assets/uPlot.min.css")),
];

/// Bytes of the page and all its assets (the budget is 300 KB).
#[cfg(test)]
pub(crate) fn total_bytes() -> usize {
    ASSETS.iter().map(|(_, _, body)| body.len()).sum()
}

fn serve(content_type: &'static str, body: &'static [u8]) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The page.
pub(super) fn page() -> Response {
    let (_, content_type, body) = ASSETS[0];
    serve(content_type, body)
}

/// An asset by name (not the page itself).
pub(super) fn asset(name: &str) -> Option<Response> {
    ASSETS[1..]
        .iter()
        .find(|(asset, _, _)| *asset == name)
        .map(|&(_, content_type, body)| serve(content_type, body))
}

#[cfg(test)]
mod tests {
    #[test]
    fn page_and_assets_stay_within_300_kb() {
        assert!(super::total_bytes() <= 300_000, "{} bytes", super::total_bytes());
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere_and_no_inline_script() {
        let page = std::str::from_utf8(super::ASSETS[0].2).unwrap();
        assert!(!page.contains("http://") && !page.contains("https://"), "no remote assets");
        assert!(!page.contains("<script>"), "scripts come from files (the CSP forbids inline)");
        assert!(
            !page.contains(" style=") && !page.contains("onclick"),
            "no inline style or handlers"
        );
    }
}
