#[tokengate::operation(weight = "light", timeout = 5)]
fn f(x: u64) -> u64 {
    x
}

fn main() {}
