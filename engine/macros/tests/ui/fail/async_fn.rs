#[tokengate::operation(weight = "light")]
async fn fetch(x: u64) -> u64 {
    x
}

fn main() {}

#[tokengate::operation(weight = "light")]
unsafe fn raw(x: *const u64) -> u64 {
    unsafe { *x }
}
