#[tokengate::operation(weight = "lite")]
fn f(x: u64) -> u64 {
    x
}

fn main() {}
