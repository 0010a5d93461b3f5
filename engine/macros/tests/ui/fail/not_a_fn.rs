#[tokengate::operation(weight = "light")]
struct Square(u64);

fn main() {}
