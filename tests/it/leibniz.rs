//! The Leibniz pyramid through the engine.

use tokengate::Engine;
use tokengate_workloads::leibniz::{token_count, Pyramid};

#[test]
fn one_million_terms_give_the_expected_pi() {
    let engine = Engine::builder().build().unwrap();
    let pyramid = Pyramid::register(&engine).unwrap();
    let mut last = 0;
    let outcome = pyramid.run(&engine, 1_000_000, |done| last = done).unwrap();
    assert!(outcome.pi.to_string().starts_with("3.14159165358979"), "pi = {}", outcome.pi);
    assert_eq!(last, 1_000_000);
    assert_eq!(outcome.tokens, 1_001_011);
    let on_lanes: u64 = outcome.per_lane.iter().sum();
    assert_eq!(on_lanes + outcome.by_callers, 1_001_011, "every token ran, once");
}

#[test]
fn odd_sizes_on_one_lane() {
    let engine = Engine::builder().workers(1).pin(false).build().unwrap();
    let pyramid = Pyramid::register(&engine).unwrap();
    let outcome = pyramid.run(&engine, 123_457, |_| {}).unwrap();
    let expected: rust_decimal::Decimal =
        (0..123_457u64).map(tokengate_workloads::leibniz::term).sum::<rust_decimal::Decimal>()
            * rust_decimal::Decimal::from(4);
    assert_eq!(outcome.pi, expected);
    assert_eq!(outcome.tokens, token_count(123_457));
}
