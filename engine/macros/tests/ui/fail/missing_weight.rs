#[tokengate::operation(timeout_ms = 10)]
fn f(x: u64) -> u64 {
    x
}

fn main() {}
