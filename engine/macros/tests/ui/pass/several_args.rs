//! Several arguments become one tuple; none becomes `()`; patterns are fine.

#[tokengate::operation(weight = "medium")]
fn join(mut words: Vec<String>, (sep, upper): (char, bool)) -> String {
    words.retain(|w| !w.is_empty());
    let text = words.join(&sep.to_string());
    if upper { text.to_uppercase() } else { text }
}

#[tokengate::operation(weight = "light")]
fn tick() {}

fn main() {
    let engine = tokengate::Engine::builder().workers(1).build().unwrap();
    let op: tokengate::Operation<(Vec<String>, (char, bool)), String> =
        join::register(&engine).unwrap();
    let words = vec!["a".to_string(), String::new(), "b".to_string()];
    assert_eq!(op.submit((words, ('-', true))).wait().unwrap(), "A-B");
    let tick: tokengate::Operation<(), ()> = tick::register(&engine).unwrap();
    tick.submit(()).wait().unwrap();
}
