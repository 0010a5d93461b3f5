//! Remote lanes: a worker and a submitter, here two engines in one process (in real use
//! two processes or machines), sharing calls through a NATS JetStream server.
//!
//! ```sh
//! echo "$(head -c 16 /dev/urandom | xxd -p)" > nats.token
//! nats-server -js -a 127.0.0.1 -p 4222 -sd /tmp/nats-store --auth "$(cat nats.token)" &
//! cargo run --release --example remote -- nats://127.0.0.1:4222 nats.token
//! ```

use tokengate::remote::RemotePlacement;
use tokengate::remote::{RemoteConfig, Worker, WorkerConfig};
use tokengate::{Engine, Weight};

fn square(x: u64) -> u64 {
    x * x
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(token_file)) = (args.next(), args.next()) else {
        eprintln!(
            "usage: remote NATS_URL TOKEN_FILE (see the comment at the top of examples/remote.rs)"
        );
        std::process::exit(2);
    };
    let nats = RemoteConfig::new(&url).token_file(&token_file)?;

    // The worker: the same registration, then serve it.
    let here = Engine::builder().build()?;
    here.operation("square", Weight::Light).remote().register(square)?;
    let worker = Worker::start(&here, WorkerConfig::new(nats.clone()))?;

    // The submitter: every call of a remote-capable operation goes to the workers
    // (`RemotePlacement::Auto`, the default, sends only what is worth a round trip).
    let engine = Engine::builder().nats(nats.placement(RemotePlacement::Remote)).build()?;
    let op = engine.operation("square", Weight::Light).remote().register(square)?;
    // Calls go remote once the submitter has heard from a worker (its heartbeat, about
    // a second); until then they run here.
    let heard = std::time::Instant::now();
    while engine.stats().remote.is_some_and(|r| r.workers == 0) {
        if heard.elapsed() > std::time::Duration::from_secs(10) {
            return Err("no worker heard from in 10 s".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let results: Vec<u64> =
        op.submit_many(0..1_000).into_iter().map(|t| t.wait().unwrap()).collect();
    assert_eq!(results[999], 998_001);
    println!("1,000 calls answered; remote: {:?}", engine.stats().remote);

    engine.shutdown();
    let served = worker.stop();
    println!("the worker served: {served:?}");
    Ok(())
}
