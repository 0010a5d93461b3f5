//! Steering a live engine through its control port, from code: the port speaks JSON
//! over a WebSocket on 127.0.0.1, behind a secret. (In-process, `engine.controller()`
//! offers the same commands as methods.)
//!
//! `cargo run --release --example steering`

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokengate::{Engine, Weight};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "an-example-secret-0123456789";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let engine = Engine::builder().control("127.0.0.1:0".parse()?, SECRET, false).build()?;
    let work = engine.register("work", Weight::Light, |x: u64| x.wrapping_mul(3))?;
    let addr = engine.control_addr().expect("the control port listens");

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut request = format!("ws://{addr}/").into_client_request()?;
        request.headers_mut().insert("authorization", format!("Bearer {SECRET}").parse()?);
        let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
        // Sends a command and returns its reply (skipping the events the port streams).
        let mut ask = async |command: Value| -> Result<Value, Box<dyn std::error::Error>> {
            socket.send(Message::text(command.to_string())).await?;
            while let Some(frame) = socket.next().await {
                let value: Value = serde_json::from_str(frame?.to_text()?)?;
                if value.get("event").is_none() {
                    return Ok(value);
                }
            }
            Err("the port closed".into())
        };

        println!("{}", ask(json!({"id": 1, "cmd": "pause", "op": "work"})).await?);
        let held = work.submit(14); // admitted, held while paused
        std::thread::sleep(std::time::Duration::from_millis(50));
        println!("while paused: {:?}", held.state());
        println!("{}", ask(json!({"id": 2, "cmd": "resume", "op": "work"})).await?);
        println!("after resume: {:?}", held.wait());
        println!("{}", ask(json!({"id": 3, "cmd": "pin", "op": "work", "lanes": "heavy"})).await?);
        println!("{}", ask(json!({"id": 4, "cmd": "batch", "op": "work", "size": 8})).await?);
        let stats = ask(json!({"id": 5, "cmd": "stats"})).await?;
        println!("stats: {stats}");
        println!("{}", ask(json!({"id": 6, "cmd": "clear"})).await?);
        Ok::<(), Box<dyn std::error::Error>>(())
    })?;
    engine.shutdown();
    Ok(())
}
