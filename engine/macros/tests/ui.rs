//! Compile tests of `#[tokengate::operation]`: what it accepts (built and run) and
//! what it refuses, with the exact errors (`TRYBUILD=overwrite` rewrites the `.stderr`
//! snapshots; they follow the rustc version).
//!
//! trybuild builds these against `tokengate` without default features (see this
//! crate's dev-dependencies), in `target/tests/trybuild`, so it never compiles polars.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}
