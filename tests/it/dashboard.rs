//! The control port's HTTP side: the dashboard's session cookie and headers, `/metrics`
//! read by a Prometheus parser, and the dashboard driven in headless Chromium.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fantoccini::{ClientBuilder, Locator};
use tokengate::{Engine, Weight};

const SECRET: &str = "dashboard-secret-0123456789abcdef";

/// A plain HTTP/1.1 GET (one request per connection): status, head, body.
fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// An engine with a control port and an operation `pi_term` fed without end by a
/// thread (Leibniz terms, 1,000 at a time) until the returned flag is set.
fn live_engine() -> (Engine, Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let engine = Engine::builder()
        .pin(false)
        .control("127.0.0.1:0".parse().unwrap(), SECRET, false)
        .log_in_memory()
        .build()
        .unwrap();
    let term = engine
        .register("pi_term", Weight::Light, |n: u64| {
            let sign = if n.is_multiple_of(2) { 1.0 } else { -1.0 };
            sign / (2 * n + 1) as f64
        })
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let feeding = Arc::clone(&stop);
    let feeder = std::thread::spawn(move || {
        let mut next = 0u64;
        while !feeding.load(Ordering::SeqCst) {
            let tokens = term.submit_many(next..next + 1_000);
            next += 1_000;
            for token in tokens {
                let _ = token.wait();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    (engine, stop, feeder)
}

fn stop_feeding(engine: &Engine, stop: &AtomicBool, feeder: std::thread::JoinHandle<()>) {
    stop.store(true, Ordering::SeqCst);
    engine.resume(None).unwrap();
    feeder.join().unwrap();
}

#[test]
fn the_dashboard_needs_the_secret_and_trades_it_for_a_cookie() {
    let (engine, stop, feeder) = live_engine();
    let addr = engine.control_addr().unwrap();
    for path in ["/", "/assets/app.js", "/metrics", "/?token=wrong-secret-wrong-secret"] {
        assert_eq!(get(addr, path, &[]).0, 401, "{path} without the secret");
    }
    let (status, head, _) = get(addr, &format!("/?token={SECRET}"), &[]);
    assert_eq!(status, 303);
    assert!(head.contains("\r\nlocation: /\r\n"), "redirects to an address without it: {head}");
    let cookie_line = head.lines().find(|l| l.starts_with("set-cookie:")).expect("a cookie");
    for attribute in ["httponly", "samesite=strict", "path=/"] {
        assert!(cookie_line.contains(attribute), "{cookie_line}");
    }
    assert!(!cookie_line.contains("secure") && !cookie_line.contains(SECRET), "{cookie_line}");
    let pair = cookie_line["set-cookie:".len()..].trim().split(';').next().unwrap().to_string();
    // The header was lower-cased above; the value is hex, so it survives.
    let (status, head, body) = get(addr, "/", &[("Cookie", &pair)]);
    assert_eq!(status, 200);
    assert!(head.contains("content-security-policy: default-src 'none'; script-src 'self'"));
    assert!(body.contains("/assets/app.js") && body.contains("/assets/uPlot.iife.min.js"));
    for asset in ["app.js", "app.css", "uPlot.iife.min.js", "uPlot.min.css"] {
        assert_eq!(get(addr, &format!("/assets/{asset}"), &[("Cookie", &pair)]).0, 200);
    }
    assert_eq!(get(addr, "/assets/nope.js", &[("Cookie", &pair)]).0, 404);
    assert_eq!(get(addr, "/", &[("Cookie", "tokengate_session=forged")]).0, 401);

    // A browser's WebSocket must come from the dashboard's own origin.
    let upgrade = |origin: &str| {
        let host = addr.to_string();
        let mut headers = vec![
            ("Cookie", pair.as_str()),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        let origin = origin.replace("HOST", &host);
        headers.push(("Origin", &origin));
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut request = format!("GET / HTTP/1.1\r\nHost: {host}\r\n");
        for (name, value) in &headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        stream.write_all(format!("{request}\r\n").as_bytes()).unwrap();
        let mut first = [0u8; 12];
        stream.read_exact(&mut first).unwrap();
        String::from_utf8_lossy(&first[9..12]).to_string()
    };
    assert_eq!(upgrade("http://evil.example"), "403");
    assert_eq!(upgrade("http://HOST"), "101");
    stop_feeding(&engine, &stop, feeder);
}

#[test]
fn metrics_parse_as_prometheus_text_and_count_what_ran() {
    let (engine, stop, feeder) = live_engine();
    let addr = engine.control_addr().unwrap();
    crate::eventually("tokens ran", || engine.stats().operations[0].1.completed >= 10_000);
    let bearer = format!("Bearer {SECRET}");
    let started = Instant::now();
    let (status, head, body) = get(addr, "/metrics", &[("Authorization", &bearer)]);
    let took = started.elapsed();
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/plain; version=0.0.4"), "{head}");
    assert!(took < Duration::from_secs(1), "a scrape took {took:?}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text");
    let value = |name: &str, label: Option<(&str, &str)>| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                other => panic!("{name}: {other:?}"),
            })
            .unwrap_or_else(|| panic!("no sample {name} {label:?} in\n{body}"))
    };
    let op = Some(("op", "pi_term"));
    assert!(value("tokengate_op_completed_total", op) >= 10_000.0);
    assert!(value("tokengate_op_submitted_total", op) >= value("tokengate_op_completed_total", op));
    for outcome in ["failed", "cancelled", "timed_out", "rejected"] {
        assert_eq!(value(&format!("tokengate_op_{outcome}_total"), op), 0.0, "{outcome}");
    }
    let histogram = scrape
        .samples
        .iter()
        .find(|s| s.metric == "tokengate_op_latency_seconds")
        .expect("the latency histogram");
    let prometheus_parse::Value::Histogram(buckets) = &histogram.value else {
        panic!("{:?}", histogram.value)
    };
    assert!(buckets.iter().any(|b| b.count > 0.0), "{buckets:?}");
    assert!(value("tokengate_lane_tokens_total", Some(("lane", "0"))) > 0.0);
    assert!(value("tokengate_lane_busy_seconds_total", Some(("lane", "0"))) > 0.0);
    // The engine logs in memory: every finished call is a row, kept or dropped, handed
    // over in buffers of 1,024 per lane (so a few thousand may still be in the lanes).
    let rows = value("tokengate_telemetry_rows_recorded_total", None)
        + value("tokengate_telemetry_rows_dropped_total", None);
    assert!(rows >= 5_000.0, "{rows} rows for at least 10,000 finished calls");
    assert_eq!(value("tokengate_model_swaps_total", None), 0.0);
    assert_eq!(value("tokengate_model_cell_moves_total", None), 0.0);
    // Present (a missing sample panics); a rescue depends on what else the machine runs.
    value("tokengate_lane_rescues_total", None);
    value("tokengate_model_version", None);
    stop_feeding(&engine, &stop, feeder);
}

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The browser and its driver, or why not. Under CI (`CI=true`) a missing program fails
/// the test; elsewhere the test says loudly that it skipped.
fn browser_programs() -> Option<()> {
    let missing: Vec<&str> =
        [CHROMIUM, CHROMEDRIVER].into_iter().filter(|p| !Path::new(p).exists()).collect();
    if missing.is_empty() {
        return Some(());
    }
    let message = format!(
        "the browser test needs {} (Debian: apt-get install -y chromium chromium-driver; \
         .ci/run installs them)",
        missing.join(" and ")
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message}");
    }
    eprintln!("\n*** SKIPPED the_dashboard_in_headless_chromium: {message} ***\n");
    None
}

fn start_driver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromedriver");
    let driver = Driver { child, port };
    crate::eventually("chromedriver listens", || TcpStream::connect(("127.0.0.1", port)).is_ok());
    driver
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

fn parse_count(text: &str) -> u64 {
    text.chars().filter(char::is_ascii_digit).collect::<String>().parse().unwrap_or(0)
}

#[test]
#[cfg_attr(
    not(has_browser),
    ignore = "chromium and chromedriver are not installed (apt-get install -y chromium chromium-driver)"
)]
fn the_dashboard_in_headless_chromium() {
    if browser_programs().is_none() {
        return;
    }
    let (engine, stop, feeder) = live_engine();
    let addr = engine.control_addr().unwrap();
    let driver = start_driver();
    let profile = tempfile::tempdir().unwrap();
    let screenshot = target_dir().join("dashboard.png");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut capabilities = serde_json::Map::new();
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--window-size=1400,1200".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "binary": CHROMIUM, "args": args }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
            .expect("a WebDriver session");
        let result = drive(&client, addr, &screenshot).await;
        client.close().await.unwrap();
        result.unwrap();
    });
    drop(driver);
    stop_feeding(&engine, &stop, feeder);
    assert!(screenshot.exists(), "{} written", screenshot.display());
}

async fn drive(
    client: &fantoccini::Client,
    addr: SocketAddr,
    screenshot: &Path,
) -> Result<(), fantoccini::error::CmdError> {
    client.goto(&format!("http://{addr}/")).await?;
    let body = client.find(Locator::Css("body")).await?.text().await?;
    assert!(body.contains("unauthorized"), "without the secret: {body}");

    client.goto(&format!("http://{addr}/?token={SECRET}")).await?;
    let url = client.current_url().await?;
    assert!(!url.as_str().contains(SECRET), "the secret left the address bar: {url}");
    let completed = Locator::Css(r#"tr[data-op="pi_term"] td[data-field="completed"]"#);
    let count = || async {
        let cell = client.wait().at_most(Duration::from_secs(20)).for_element(completed).await?;
        Ok::<u64, fantoccini::error::CmdError>(parse_count(&cell.text().await?))
    };
    let first = count().await?;
    let grows = |from: u64| async move {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let now = count().await?;
            if now > from {
                return Ok::<u64, fantoccini::error::CmdError>(now);
            }
            assert!(Instant::now() < deadline, "pi_term's count stays at {now}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    grows(first).await?;

    client.find(Locator::Css("#op")).await?.select_by_value("pi_term").await?;
    client.find(Locator::Id("pause")).await?.click().await?;
    let overrides = Locator::Css(r#"tr[data-op="pi_term"] td[data-field="overrides"]"#);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !client.find(overrides).await?.text().await?.contains("paused") {
        assert!(Instant::now() < deadline, "the table never showed the pause");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Batches already running finish; then nothing more of pi_term completes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let paused_at = count().await?;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(count().await?, paused_at, "pi_term completes nothing while paused");

    client.find(Locator::Id("resume")).await?.click().await?;
    grows(paused_at).await?;
    std::fs::create_dir_all(screenshot.parent().unwrap()).unwrap();
    std::fs::write(screenshot, client.screenshot().await?).unwrap();
    // The same page at a narrow width, for a person to look at (target/dashboard-800.png).
    client.set_window_size(800, 1200).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let narrow = screenshot.with_file_name("dashboard-800.png");
    std::fs::write(narrow, client.screenshot().await?).unwrap();
    Ok(())
}

#[test]
fn connections_beyond_the_cap_wait_until_one_closes() {
    let engine = Engine::builder()
        .pin(false)
        .control("127.0.0.1:0".parse().unwrap(), SECRET, false)
        .build()
        .unwrap();
    let addr = engine.control_addr().unwrap();
    let idle: Vec<TcpStream> = (0..tokengate::control::MAX_TCP_CONNECTIONS)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // The kernel queues the next one; the server does not read it while all are open.
    let mut extra = TcpStream::connect(addr).unwrap();
    extra.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).unwrap();
    extra.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut first = [0u8; 12];
    assert!(extra.read_exact(&mut first).is_err(), "served beyond the cap");
    drop(idle);
    extra.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    extra.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 401", "answered once a connection closed");
}

#[test]
fn lane_busy_time_counts_work_not_waiting_for_it() {
    let engine = Engine::builder().workers(1).pin(false).build().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let idle = engine.stats().lanes[0].busy_ns;
    assert!(idle < 100_000_000, "an idle lane counted {idle} ns busy in 300 ms");
    let spin = engine
        .register("spin", Weight::Light, |ms: u64| crate::spin_for(Duration::from_millis(ms)))
        .unwrap();
    spin.submit(300).wait().unwrap();
    let busy = engine.stats().lanes[0].busy_ns - idle;
    assert!(busy >= 290_000_000, "a 300 ms call counted {busy} ns busy");
}
