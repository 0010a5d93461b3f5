#[tokengate::operation(weight = "light")]
fn double<T: std::ops::Add<Output = T> + Copy>(x: T) -> T {
    x + x
}

#[tokengate::operation(weight = "light")]
fn show(x: impl std::fmt::Display) -> String {
    x.to_string()
}

fn main() {}
