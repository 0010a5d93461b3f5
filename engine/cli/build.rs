//! Tells the end-to-end tests which external programs this machine has, so that a test
//! needing a missing one reports itself as ignored (with the reason) rather than passing.
//! Under CI (`CI=true`) every test is compiled in: a missing program fails it loudly.

use std::path::Path;

fn has(candidates: &[&str]) -> bool {
    candidates.iter().any(|p| Path::new(p).exists())
}

fn main() {
    println!("cargo::rustc-check-cfg=cfg(has_nats_server)");
    println!("cargo::rustc-check-cfg=cfg(has_browser)");
    println!("cargo::rerun-if-env-changed=CI");
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let nats = ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"];
    let browser = ["/usr/bin/chromium", "/usr/bin/chromedriver"];
    for path in nats.iter().chain(&browser) {
        println!("cargo::rerun-if-changed={path}");
    }
    if ci || has(&nats) {
        println!("cargo::rustc-cfg=has_nats_server");
    }
    if ci || browser.iter().all(|p| Path::new(p).exists()) {
        println!("cargo::rustc-cfg=has_browser");
    }
}
