#[tokengate::operation(weight = "light")]
fn len(text: &str) -> usize {
    text.len()
}

fn main() {}
