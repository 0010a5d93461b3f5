struct Counter;

impl Counter {
    #[tokengate::operation(weight = "light")]
    fn bump(&self, by: u64) -> u64 {
        by
    }
}

fn main() {}
