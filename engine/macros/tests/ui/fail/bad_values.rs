#[tokengate::operation(weight = "light", timeout_ms = 0)]
fn zero_timeout(x: u64) -> u64 {
    x
}

#[tokengate::operation(weight = "light", retries = 255)]
fn too_many_retries(x: u64) -> u64 {
    x
}

#[tokengate::operation(weight = "light", name = "")]
fn empty_name(x: u64) -> u64 {
    x
}

#[tokengate::operation(weight = "light", weight = "heavy")]
fn twice(x: u64) -> u64 {
    x
}

#[tokengate::operation(weight = light)]
fn unquoted(x: u64) -> u64 {
    x
}

fn main() {}
