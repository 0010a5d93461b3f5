//! The control port with a real WebSocket client against a running engine.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokengate::router::RouteSource;
use tokengate::{Engine, LaneSet, Weight};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::eventually;

const SECRET: &str = "test-secret-0123456789abcdef";

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn engine_with_control() -> Engine {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    Engine::builder().pin(false).control(addr, SECRET, false).log_in_memory().build().unwrap()
}

async fn connect(addr: SocketAddr, secret: Option<&str>) -> Result<Socket, String> {
    let mut request = format!("ws://{addr}/").into_client_request().unwrap();
    if let Some(secret) = secret {
        request.headers_mut().insert("authorization", format!("Bearer {secret}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(format!("http {}", response.status().as_u16()))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// The next JSON frame (a reply or an event), within 10 s.
async fn next_frame(socket: &mut Socket) -> Value {
    let frame = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .expect("a frame in time")
        .expect("the connection stays open")
        .unwrap();
    serde_json::from_str(frame.to_text().unwrap()).unwrap()
}

/// Sends one frame and returns the next reply (skipping events).
async fn ask(socket: &mut Socket, message: Message) -> Value {
    socket.send(message).await.unwrap();
    loop {
        let value = next_frame(socket).await;
        if value.get("event").is_none() {
            return value;
        }
    }
}

async fn cmd(socket: &mut Socket, request: Value) -> Value {
    ask(socket, Message::text(request.to_string())).await
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn the_handshake_needs_the_secret() {
    let engine = engine_with_control();
    let addr = engine.control_addr().unwrap();
    assert!(addr.ip().is_loopback());
    runtime().block_on(async {
        assert_eq!(connect(addr, None).await.err().unwrap(), "http 401");
        assert_eq!(
            connect(addr, Some("wrong-secret-wrong-secret")).await.err().unwrap(),
            "http 401"
        );
        let url = format!("ws://{addr}/?token={SECRET}");
        assert!(tokio_tungstenite::connect_async(url).await.is_ok(), "?token= works too");
        let mut socket = connect(addr, Some(SECRET)).await.unwrap();
        let reply = cmd(&mut socket, json!({"id": 7, "cmd": "stats"})).await;
        assert_eq!((reply["id"].clone(), reply["ok"].clone()), (json!(7), json!(true)));
    });
    let public = Engine::builder().control("0.0.0.0:0".parse().unwrap(), SECRET, false).build();
    assert!(public.unwrap_err().to_string().contains("not a loopback address"));
    // Secrets count characters, and must fit in an `Authorization` header.
    let local = || Engine::builder().control("127.0.0.1:0".parse().unwrap(), "x", false);
    for (secret, refused) in [
        ("é".repeat(9), "at least 16 characters"),
        (format!("{SECRET}\r\n"), "spaces or control characters"),
        ("sixteen chars ok".to_string(), "spaces or control characters"),
    ] {
        let built = local().control("127.0.0.1:0".parse().unwrap(), secret, false).build();
        assert!(built.unwrap_err().to_string().contains(refused), "{refused}");
    }
    let unicode = local().control("127.0.0.1:0".parse().unwrap(), "é".repeat(16), false).build();
    assert!(unicode.is_ok(), "16 characters are enough, whatever their bytes");
}

#[test]
fn pause_stops_one_operation_while_others_run_and_resume_loses_nothing() {
    let engine = engine_with_control();
    let addr = engine.control_addr().unwrap();
    let slow = |x: u64| {
        std::thread::sleep(Duration::from_micros(200));
        x
    };
    let a = engine.register("a", Weight::Light, slow).unwrap();
    let b = engine.register("b", Weight::Light, slow).unwrap();
    let rt = runtime();
    let mut socket = rt.block_on(connect(addr, Some(SECRET))).unwrap();
    let reply = rt.block_on(cmd(&mut socket, json!({"id": 1, "cmd": "pause", "op": "a"})));
    assert_eq!(reply["ok"], json!(true), "{reply}");
    assert!(a.overrides().paused);
    let stop = Arc::new(AtomicBool::new(false));
    let (mut a_tokens, mut b_tokens) = (Vec::new(), Vec::new());
    for i in 0..200u64 {
        a_tokens.push(a.submit(i));
        b_tokens.push(b.submit(i));
    }
    eventually("b runs while a is paused", || b.stats().completed == 200);
    assert_eq!(a.stats().completed, 0, "a is paused: nothing of it ran");
    assert!(a_tokens.iter().all(|t| !t.is_finished()), "its tokens wait, not lost");
    let held = || engine.controller().snapshot().iter().find(|s| s.op == "a").unwrap().held;
    eventually("the lanes set every token of a aside", || held() == 200);
    let reply = rt.block_on(cmd(&mut socket, json!({"id": 2, "cmd": "resume", "op": "a"})));
    assert_eq!(reply["ok"], json!(true));
    for (i, token) in a_tokens.into_iter().enumerate() {
        assert_eq!(token.wait(), Ok(i as u64));
    }
    for token in b_tokens {
        token.wait().unwrap();
    }
    assert_eq!(held(), 0, "a resume runs what the pause held");
    stop.store(true, Ordering::SeqCst);

    // Pin and batch overrides beat the router, and the telemetry says so.
    let reply =
        rt.block_on(cmd(&mut socket, json!({"id": 3, "cmd": "pin", "op": "b", "lanes": "heavy"})));
    assert_eq!(reply["ok"], json!(true));
    let reply =
        rt.block_on(cmd(&mut socket, json!({"id": 4, "cmd": "batch", "op": "b", "size": 4})));
    assert_eq!(reply["ok"], json!(true));
    assert_eq!(b.overrides().pin, Some(LaneSet::Heavy));
    let pinned: Vec<u64> = b.submit_many(0..8u64).into_iter().map(|t| t.id()).collect();
    eventually("the pinned tokens ran", || b.stats().completed == 208);
    let reply = rt.block_on(cmd(&mut socket, json!({"id": 5, "cmd": "clear"})));
    assert_eq!(reply["ok"], json!(true));
    assert_eq!(b.overrides(), tokengate::control::Overrides::default());

    // Shutdown through the port drains.
    let reply = rt.block_on(cmd(&mut socket, json!({"id": 6, "cmd": "shutdown"})));
    assert_eq!(reply["ok"], json!(true));
    eventually("the engine stops taking work", || engine.stats().shutting_down);
    engine.shutdown();
    let records = engine.take_records();
    let overridden: Vec<_> = records.iter().filter(|r| pinned.contains(&r.token_id)).collect();
    assert_eq!(overridden.len(), 8);
    assert!(overridden.iter().all(|r| r.route_source == RouteSource::Override));
    assert!(overridden.iter().all(|r| r.lane_set == LaneSet::Heavy && r.batch_size <= 4));
}

#[test]
fn bad_input_gets_a_clear_answer_and_the_engine_keeps_running() {
    let engine = engine_with_control();
    let addr = engine.control_addr().unwrap();
    let echo = engine.register("echo", Weight::Light, |x: u32| x).unwrap();
    let pyramid = tokengate_workloads::leibniz::Pyramid::register(&engine).unwrap();
    let rt = runtime();
    std::thread::scope(|scope| {
        // A pyramid runs on the engine for the whole session below.
        let run = scope.spawn(|| pyramid.run(&engine, 1_000_000, |_| {}));
        rt.block_on(async {
            let mut socket = connect(addr, Some(SECRET)).await.unwrap();
            let code = |reply: &Value| reply["error"]["code"].as_str().unwrap_or("").to_string();
            assert_eq!(code(&ask(&mut socket, Message::text("not json")).await), "bad_json");
            assert_eq!(code(&ask(&mut socket, Message::text("[1,2]")).await), "bad_request");
            assert_eq!(code(&cmd(&mut socket, json!({"id": 1})).await), "bad_request");
            assert_eq!(
                code(&cmd(&mut socket, json!({"id": 1, "cmd": "fly"})).await),
                "unknown_cmd"
            );
            assert_eq!(
                code(&cmd(&mut socket, json!({"id": 1, "cmd": "pin"})).await),
                "bad_request"
            );
            let reply = cmd(&mut socket, json!({"id": 9, "cmd": "pause", "op": "nope"})).await;
            assert_eq!((code(&reply), reply["id"].clone()), ("unknown_op".into(), json!(9)));
            let reply =
                cmd(&mut socket, json!({"id": 1, "cmd": "batch", "op": "echo", "size": "x"})).await;
            assert_eq!(code(&reply), "bad_request");
            let reply =
                cmd(&mut socket, json!({"id": 1, "cmd": "batch", "op": "echo", "size": 0})).await;
            assert_eq!(code(&reply), "bad_value");
            let reply = cmd(&mut socket, json!({"id": 1, "cmd": "subscribe", "interval_ms": 1}));
            assert_eq!(code(&reply.await), "bad_value", "a value out of range, as for batch");
            assert_eq!(
                code(&ask(&mut socket, Message::binary(vec![1, 2, 3])).await),
                "binary_frame"
            );
            // A flood of 10,000 invalid frames is answered (or rate limited), never a
            // crash, while another client is served and the pyramid still gets pi right.
            let (flood_tx, mut flood_rx) = socket.split();
            let sender = tokio::spawn(async move {
                let mut flood_tx = flood_tx;
                for _ in 0..10_000 {
                    flood_tx.send(Message::text("{")).await.unwrap();
                }
                flood_tx
            });
            let mut limited = false;
            for _ in 0..10_000 {
                let reply = flood_rx.next().await.unwrap().unwrap();
                let value: Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
                limited |= code(&value) == "rate_limited";
            }
            drop(sender.await.unwrap());
            assert!(limited, "a flood meets the rate cap");
            let mut bystander = connect(addr, Some(SECRET)).await.unwrap();
            let reply = cmd(&mut bystander, json!({"id": 3, "cmd": "stats"})).await;
            assert_eq!(reply["ok"], json!(true), "another client is served");
            // An oversized frame closes the connection with a reason.
            let mut other = connect(addr, Some(SECRET)).await.unwrap();
            let _ = other.send(Message::text("x".repeat(100_000))).await;
            let mut closed = false;
            while let Some(frame) = other.next().await {
                match frame {
                    Ok(Message::Close(_)) | Err(_) => {
                        closed = true;
                        break;
                    }
                    _ => {}
                }
            }
            assert!(closed, "the connection was closed");
            // Another client is still served.
            let mut fresh = connect(addr, Some(SECRET)).await.unwrap();
            let reply = cmd(&mut fresh, json!({"id": 2, "cmd": "stats"})).await;
            assert_eq!(reply["ok"], json!(true));
            assert_eq!(reply["ops"][0]["op"], json!("echo"));
        });
        let outcome = run.join().unwrap().unwrap();
        assert!(outcome.pi.to_string().starts_with("3.14159165358979"), "pi = {}", outcome.pi);
    });
    assert_eq!(echo.submit(3).wait(), Ok(3), "the engine keeps running");
}

#[test]
fn subscribers_get_stats_and_override_events() {
    let engine = engine_with_control();
    let addr = engine.control_addr().unwrap();
    let echo = engine.register("echo", Weight::Light, |x: u32| x).unwrap();
    runtime().block_on(async {
        let mut watcher = connect(addr, Some(SECRET)).await.unwrap();
        let reply =
            cmd(&mut watcher, json!({"id": 1, "cmd": "subscribe", "interval_ms": 50})).await;
        assert_eq!(reply["interval_ms"], json!(50));
        let mut steerer = connect(addr, Some(SECRET)).await.unwrap();
        cmd(&mut steerer, json!({"id": 1, "cmd": "pin", "op": "echo", "lanes": "light"})).await;
        let (mut stats, mut override_seen) = (false, false);
        while !(stats && override_seen) {
            let event = next_frame(&mut watcher).await;
            match event["event"].as_str() {
                Some("stats") => stats |= event["ops"][0]["op"] == json!("echo"),
                Some("override") => {
                    override_seen = event["op"] == json!("echo") && event["cmd"] == json!("pin");
                    assert!(event["by"].is_u64(), "names the connection");
                }
                _ => {}
            }
        }
    });
    assert_eq!(echo.submit(1).wait(), Ok(1));
}

#[test]
fn engine_events_give_each_lane_sets_latency_over_the_window() {
    let engine = engine_with_control();
    let addr = engine.control_addr().unwrap();
    let echo = engine.register("echo", Weight::Light, |x: u32| x).unwrap();
    let slow = engine
        .register("slow", Weight::Heavy, |()| std::thread::sleep(Duration::from_millis(3)))
        .unwrap();
    runtime().block_on(async {
        let mut watcher = connect(addr, Some(SECRET)).await.unwrap();
        let subscribe = json!({"id": 1, "cmd": "subscribe", "interval_ms": 100, "engine": true});
        cmd(&mut watcher, subscribe).await;
        let (mut light, mut heavy) = (false, false);
        while !(light && heavy) {
            // Keep both sets busy, so every window has tokens of each.
            let tokens = echo.submit_many(0..100);
            slow.submit(()).wait().unwrap();
            tokens.into_iter().for_each(|t| drop(t.wait()));
            let event = next_frame(&mut watcher).await;
            if event["event"] != json!("stats") {
                continue;
            }
            let sets = event["engine"]["sets"].as_array().expect("sets").clone();
            assert_eq!(sets.len(), 3, "{sets:?}");
            let of = |name: &str| sets.iter().find(|s| s["set"] == json!(name)).unwrap().clone();
            let (l, h) = (of("light"), of("heavy"));
            light |= l["tokens"].as_u64().unwrap() > 0 && l["p99_ms"].as_f64().unwrap() > 0.0;
            // The heavy set's tokens took at least their 3 ms.
            heavy |= h["tokens"].as_u64().unwrap() > 0 && h["p99_ms"].as_f64().unwrap() >= 3.0;
            assert_eq!(of("remote")["tokens"], json!(0));
        }
    });
}

#[test]
fn cancel_and_throttle_take_effect_on_the_running_engine() {
    let engine = engine_with_control();
    let addr = engine.control_addr().unwrap();
    let running_now = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (now, peak) = (Arc::clone(&running_now), Arc::clone(&most));
    let work = engine
        .register("work", Weight::Light, move |x: u64| {
            let inside = now.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(inside, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(2));
            now.fetch_sub(1, Ordering::SeqCst);
            x
        })
        .unwrap();
    let rt = runtime();
    let mut socket = rt.block_on(connect(addr, Some(SECRET))).unwrap();

    // Throttle to one running token: two lanes, yet never two at once.
    let reply =
        rt.block_on(cmd(&mut socket, json!({"id": 1, "cmd": "throttle", "op": "work", "max": 1})));
    assert_eq!(reply["ok"], json!(true), "{reply}");
    let tokens = work.submit_many(0..40u64);
    for (i, token) in tokens.into_iter().enumerate() {
        assert_eq!(token.wait(), Ok(i as u64));
    }
    assert_eq!(most.load(Ordering::SeqCst), 1, "the throttle capped running tokens");
    rt.block_on(cmd(&mut socket, json!({"id": 2, "cmd": "throttle", "op": "work", "max": null})));

    // Cancel all waiting tokens of an operation: pause it, queue work, cancel.
    rt.block_on(cmd(&mut socket, json!({"id": 3, "cmd": "pause", "op": "work"})));
    let waiting = work.submit_many(0..50u64);
    let reply = rt.block_on(cmd(&mut socket, json!({"id": 4, "cmd": "cancel", "op": "work"})));
    assert_eq!(reply["ok"], json!(true), "{reply}");
    rt.block_on(cmd(&mut socket, json!({"id": 5, "cmd": "resume", "op": "work"})));
    for token in waiting {
        assert_eq!(
            token.wait(),
            Err(tokengate::TokenError::Cancelled { by: tokengate::error::CancelSource::Control })
        );
    }
    // Cancel one token by id.
    rt.block_on(cmd(&mut socket, json!({"id": 6, "cmd": "pause", "op": "work"})));
    let (keep, drop_one) = (work.submit(1), work.submit(2));
    let reply =
        rt.block_on(cmd(&mut socket, json!({"id": 7, "cmd": "cancel", "token": drop_one.id()})));
    assert_eq!(reply["ok"], json!(true), "{reply}");
    rt.block_on(cmd(&mut socket, json!({"id": 8, "cmd": "resume"})));
    let (keep_id, dropped_id) = (keep.id(), drop_one.id());
    assert_eq!(keep.wait(), Ok(1));
    assert!(matches!(drop_one.wait(), Err(tokengate::TokenError::Cancelled { .. })));
    // A token that is not waiting (finished, already cancelled, never submitted) is
    // refused, and nothing is left pending.
    for (id, token) in [(9, keep_id), (10, dropped_id), (11, 999_999_999)] {
        let reply =
            rt.block_on(cmd(&mut socket, json!({"id": id, "cmd": "cancel", "token": token})));
        assert_eq!(reply["ok"], json!(false), "{reply}");
        assert_eq!(reply["error"]["code"], json!("not_waiting"), "{reply}");
    }
    // Stats carry running counts and latency percentiles.
    let reply = rt.block_on(cmd(&mut socket, json!({"id": 12, "cmd": "stats"})));
    let op = &reply["ops"][0];
    assert!(op["p99_ms"].as_f64().unwrap() >= op["p50_ms"].as_f64().unwrap());
    assert!(op["p50_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(op["cancelled"], json!(51));
}

#[test]
fn model_and_adapt_commands_report_and_refuse_clearly() {
    let engine = engine_with_control();
    let addr = engine.control_addr().unwrap();
    let rt = runtime();
    let mut socket = rt.block_on(connect(addr, Some(SECRET))).unwrap();
    let reply = rt.block_on(cmd(&mut socket, json!({"id": 1, "cmd": "model"})));
    assert_eq!(reply["ok"], json!(true), "{reply}");
    assert_eq!(reply["model"]["enabled"], json!(false));
    assert_eq!(reply["model"]["model_version"], json!(engine.stats().model_version));
    let reply = rt.block_on(cmd(&mut socket, json!({"id": 2, "cmd": "adapt", "on": true})));
    assert_eq!(reply["error"]["code"], json!("bad_value"), "{reply}");
    assert!(reply["error"]["message"].as_str().unwrap().contains("without adaptation"));
    let reply = rt.block_on(cmd(&mut socket, json!({"id": 3, "cmd": "adapt"})));
    assert_eq!(reply["error"]["code"], json!("bad_request"), "{reply}");
}
