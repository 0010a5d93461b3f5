struct Job(u64);

#[tokengate::operation(weight = "light", retries = 2)]
fn run(job: Job) -> u64 {
    job.0
}

fn main() {}
