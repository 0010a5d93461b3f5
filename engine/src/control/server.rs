//! The control port's server: one listener, HTTP through axum (over hyper), serving:
//!
//! * `GET /` with a WebSocket upgrade: the control protocol ([`super::protocol`],
//!   `session.rs`); without one, the dashboard (`dashboard.rs`) and its `/assets/…`;
//! * `GET /metrics`: Prometheus text (`metrics.rs`).
//!
//! Every route needs the secret — `Authorization: Bearer …`, or `?token=` — compared in
//! constant time, or the session cookie that opening the dashboard with `?token=` sets;
//! otherwise HTTP 401 before anything else. A WebSocket upgrade that carries an `Origin`
//! (a browser) must come from the page's own origin (403 otherwise). Loopback by
//! default; frames over 64 KiB close the connection with a reason; at most 16 WebSocket
//! connections (503 beyond) and 64 TCP connections of any kind (further ones wait in the
//! listen backlog until one closes).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use super::protocol::Event;
use super::Controller;

/// Largest frame a client may send.
pub const MAX_MESSAGE_BYTES: usize = 64 << 10;
/// Most WebSocket connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Most TCP connections (HTTP or WebSocket) open at once.
pub const MAX_TCP_CONNECTIONS: usize = 64;
/// The dashboard's session cookie (HttpOnly, SameSite=Strict, Path=/).
pub const SESSION_COOKIE: &str = "tokengate_session";

/// A fresh secret: 32 random bytes from the OS (`getrandom`), hex-encoded.
pub fn generate_secret() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Compares a presented secret with ours in constant time (`subtle`), so timing does
/// not reveal how much of a guess was right (a length mismatch is refused at once: the
/// length of our secrets is public).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// The secret a request presents: the `Authorization: Bearer` header, or else `?token=`.
fn presented_secret(request: &Request) -> Option<String> {
    let headers = request.headers();
    if let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        return value.strip_prefix("Bearer ").map(str::to_string);
    }
    query_token(request)
}

fn query_token(request: &Request) -> Option<String> {
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(request.uri()).ok()?;
    pairs.into_iter().find_map(|(key, value)| (key == "token").then_some(value))
}

/// The value of our session cookie, if the request carries one.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|cookie| cookie.name() == SESSION_COOKIE)
        .and_then(|cookie| cookie.value_raw())
}

/// Where and how the control port listens.
#[derive(Debug, Clone)]
pub(crate) struct ControlConfig {
    pub(crate) addr: SocketAddr,
    pub(crate) secret: String,
    pub(crate) public: bool,
}

/// Checks the configuration and binds the port, before the engine starts any thread
/// (so a bad address or secret fails `build()` with nothing to clean up).
pub(crate) fn bind(config: &ControlConfig) -> Result<std::net::TcpListener, crate::BuildError> {
    if config.secret.chars().count() < 16 {
        return Err(crate::BuildError::invalid("control secret must be at least 16 characters"));
    }
    if config.secret.chars().any(|c| c.is_control() || c.is_whitespace()) {
        // It travels in an `Authorization` header, where these cannot.
        return Err(crate::BuildError::invalid(
            "control secret must not contain spaces or control characters",
        ));
    }
    if !config.addr.ip().is_loopback() {
        if !config.public {
            return Err(crate::BuildError::invalid(format!(
                "control port {} is not a loopback address: allow it explicitly",
                config.addr
            )));
        }
        tracing::warn!("control port listening on {}, beyond this machine", config.addr);
    }
    let listener = std::net::TcpListener::bind(config.addr).map_err(|e| {
        crate::BuildError::io(format!("binding the control port {}", config.addr), e)
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| crate::BuildError::io("configuring the control port", e))?;
    Ok(listener)
}

/// Serves the control port on `listener` (bound by [`bind`]) on `runtime`.
pub(crate) fn start(
    runtime: &tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    controller: Controller,
    secret: String,
) -> std::io::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    let _guard = runtime.enter();
    let listener = CappedListener {
        listener: TcpListener::from_std(listener)?,
        open: Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS)),
    };
    let server = Arc::new(Server::new(controller, secret)?);
    let app = axum::Router::new()
        .route("/", get(root))
        .route("/metrics", get(metrics))
        .route("/assets/{name}", get(asset))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(server);
    runtime.spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!("the control port {addr} stopped: {error}");
        }
    });
    Ok(addr)
}

/// The port's listener: accepts a connection only while fewer than
/// [`MAX_TCP_CONNECTIONS`] are open; each holds its permit until it closes (an upgraded
/// WebSocket too: hyper hands the same stream over).
struct CappedListener {
    listener: TcpListener,
    open: Arc<Semaphore>,
}

impl axum::serve::Listener for CappedListener {
    type Io = CappedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (CappedStream, SocketAddr) {
        let permit =
            Arc::clone(&self.open).acquire_owned().await.expect("the semaphore is never closed");
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => return (CappedStream { stream, _permit: permit }, peer),
                // Out of file descriptors or a connection reset before accept: wait a
                // little rather than spin.
                Err(error) => {
                    tracing::debug!("control port accept failed: {error}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// A connection and its place under the cap.
struct CappedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for CappedStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CappedStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

pub(super) struct Server {
    pub(super) controller: Controller,
    secret: String,
    /// The dashboard's session cookie value: random per engine, never the secret.
    session: String,
    connections: AtomicUsize,
    next_connection: AtomicU64,
    /// Override and model-swap events, for every subscriber.
    pub(super) overrides: broadcast::Sender<String>,
    metrics: prometheus_client::registry::Registry,
}

/// Who a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// Presented the secret (header or `?token=`).
    Secret,
    /// Carries the dashboard's session cookie.
    Session,
    /// Presented nothing valid.
    Stranger,
}

impl Server {
    fn new(controller: Controller, secret: String) -> std::io::Result<Self> {
        let (overrides, _) = broadcast::channel(256);
        let swaps = overrides.clone();
        controller.on_model_swap(move |version| {
            let _ = swaps.send(super::protocol::to_json(&Event::ModelSwapped { version }));
        });
        let metrics = super::metrics::registry(controller.clone());
        Ok(Server {
            controller,
            secret,
            session: generate_secret()?,
            connections: AtomicUsize::new(0),
            next_connection: AtomicU64::new(1),
            overrides,
            metrics,
        })
    }

    fn caller(&self, request: &Request) -> Caller {
        let presented = presented_secret(request);
        if let Some(given) = presented {
            return match constant_time_eq(given.as_bytes(), self.secret.as_bytes()) {
                true => Caller::Secret,
                false => Caller::Stranger,
            };
        }
        match session_cookie(request.headers()) {
            Some(value) if constant_time_eq(value.as_bytes(), self.session.as_bytes()) => {
                Caller::Session
            }
            _ => Caller::Stranger,
        }
    }

    /// Answers a WebSocket handshake with 101 and runs the session once hyper hands
    /// over the connection.
    fn upgrade(self: Arc<Self>, mut request: Request) -> Response {
        let headers = request.headers();
        let version_13 = headers.get(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13");
        let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).filter(|_| version_13) else {
            let mut response =
                refuse(StatusCode::BAD_REQUEST, "a WebSocket handshake needs version 13 and a key");
            response
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
            return response;
        };
        let accept = derive_accept_key(key.as_bytes());
        if self.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            self.connections.fetch_sub(1, Ordering::SeqCst);
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "too many control connections");
        }
        let upgrading = hyper::upgrade::on(&mut request);
        let server = Arc::clone(&self);
        tokio::spawn(async move {
            match upgrading.await {
                Ok(upgraded) => {
                    let config = WebSocketConfig::default()
                        .max_message_size(Some(MAX_MESSAGE_BYTES))
                        .max_frame_size(Some(MAX_MESSAGE_BYTES));
                    let io = TokioIo::new(upgraded);
                    let socket =
                        WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
                    let id = server.next_connection.fetch_add(1, Ordering::Relaxed);
                    tracing::info!("control connection {id} opened");
                    super::session::serve(&server.controller, &server.overrides, socket, id).await;
                    tracing::info!("control connection {id} closed");
                }
                Err(error) => tracing::debug!("a WebSocket upgrade failed: {error}"),
            }
            server.connections.fetch_sub(1, Ordering::SeqCst);
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::UPGRADE, "websocket")
            .header(header::CONNECTION, "upgrade")
            .header(header::SEC_WEBSOCKET_ACCEPT, accept)
            .body(Body::empty())
            .expect("a valid handshake response")
    }
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, [(header::CACHE_CONTROL, "no-store")], format!("{message}\n")).into_response()
}

fn unauthorized() -> Response {
    refuse(StatusCode::UNAUTHORIZED, "unauthorized: present the control secret")
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.get(header::UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// A browser's WebSocket must come from a page of this port (`Origin` equal to
/// `http://` + the `Host` it asked for); clients without an `Origin` (ctl) pass.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else { return true };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    !host.is_empty() && origin.to_str().is_ok_and(|o| o.strip_prefix("http://") == Some(host))
}

/// `GET /`: the WebSocket, the dashboard, or the redirect that trades `?token=` for
/// the session cookie.
async fn root(State(server): State<Arc<Server>>, request: Request) -> Response {
    let caller = server.caller(&request);
    if caller == Caller::Stranger {
        return unauthorized();
    }
    if is_upgrade(request.headers()) {
        if !same_origin(request.headers()) {
            return refuse(StatusCode::FORBIDDEN, "WebSocket from another origin");
        }
        return server.upgrade(request);
    }
    if caller == Caller::Secret && query_token(&request).is_some() {
        // Trade the secret in the address bar for a cookie scripts cannot read.
        let cookie = cookie::Cookie::build((SESSION_COOKIE, server.session.as_str()))
            .http_only(true)
            .same_site(cookie::SameSite::Strict)
            .path("/")
            .build()
            .to_string();
        return Response::builder()
            .status(StatusCode::SEE_OTHER)
            .header(header::LOCATION, "/")
            .header(header::SET_COOKIE, cookie)
            .header(header::CACHE_CONTROL, "no-store")
            .header(header::REFERRER_POLICY, "no-referrer")
            .body(Body::empty())
            .expect("a valid redirect");
    }
    super::dashboard::page()
}

/// `GET /assets/{name}`: the dashboard's script, styles and chart library.
async fn asset(
    State(server): State<Arc<Server>>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    if server.caller(&request) == Caller::Stranger {
        return unauthorized();
    }
    super::dashboard::asset(&name).unwrap_or_else(|| refuse(StatusCode::NOT_FOUND, "no such asset"))
}

/// `GET /metrics`: Prometheus text, read from the counters the engine keeps anyway.
async fn metrics(State(server): State<Arc<Server>>, request: Request) -> Response {
    if server.caller(&request) == Caller::Stranger {
        return unauthorized();
    }
    let mut body = String::with_capacity(16 << 10);
    if prometheus_client::encoding::prometheus_text::encode(&mut body, &server.metrics).is_err() {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, "encoding the metrics failed");
    }
    (
        [
            (header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use axum::http::{header, HeaderMap, HeaderValue};

    use super::{same_origin, session_cookie, SESSION_COOKIE};

    fn headers(pairs: &[(header::HeaderName, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn only_the_pages_own_origin_may_open_a_websocket() {
        let host = (header::HOST, "127.0.0.1:7411");
        assert!(same_origin(&headers(std::slice::from_ref(&host))), "no Origin: not a browser");
        assert!(same_origin(&headers(&[host.clone(), (header::ORIGIN, "http://127.0.0.1:7411")])));
        for origin in ["http://evil.example", "https://127.0.0.1:7411", "null", "http://127.0.0.1"]
        {
            assert!(!same_origin(&headers(&[host.clone(), (header::ORIGIN, origin)])), "{origin}");
        }
        assert!(!same_origin(&headers(&[(header::ORIGIN, "http://")])), "no Host");
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let map = headers(&[
            (header::COOKIE, "a=1; tokengate_session=abc; b=2"),
            (header::COOKIE, "c=3"),
        ]);
        assert_eq!(session_cookie(&map), Some("abc"));
        assert_eq!(session_cookie(&headers(&[(header::COOKIE, "tokengate_sessionx=1")])), None);
        assert_eq!(SESSION_COOKIE, "tokengate_session");
    }
}
