//! One argument: `Operation<u64, u64>`; the fn stays callable.

#[tokengate::operation(weight = "light")]
fn square(x: u64) -> u64 {
    x * x
}

fn main() {
    let engine = tokengate::Engine::builder().workers(1).build().unwrap();
    let op: tokengate::Operation<u64, u64> = square::register(&engine).unwrap();
    assert_eq!(op.submit(7).wait().unwrap(), 49);
    assert_eq!(square(8), 64);
    assert_eq!(square::NAME, "square");
}
