//! Every option; visibility mirrored; items inside a module and inside a fn body.

#![deny(missing_docs)]

use std::sync::atomic::{AtomicU32, Ordering};

static CALLS: AtomicU32 = AtomicU32::new(0);

/// Operations in a module of their own.
pub mod ops {
    /// A documented public operation (the crate denies missing docs).
    #[tokengate::operation(weight = "heavy", timeout_ms = 2_000, retries = 2, name = "ops.flaky")]
    pub fn flaky(n: u32) -> u32 {
        if super::CALLS.fetch_add(1, super::Ordering::SeqCst) < 2 {
            panic!("not yet");
        }
        n + 1
    }

    #[tokengate::operation(weight = "light")]
    #[cfg(any())]
    pub fn compiled_out(x: NoSuchType) -> u64 {
        x.0
    }

    #[tokengate::operation(weight = "light", retries = 0)]
    pub(crate) fn r#type(name: &'static str) -> usize {
        name.len()
    }
}

fn main() {
    std::panic::set_hook(Box::new(|_| {})); // the injected panics are expected
    #[tokengate::operation(weight = "light")]
    fn local(x: i32) -> i32 {
        -x
    }

    let engine = tokengate::Engine::builder().workers(1).build().unwrap();
    let flaky = ops::flaky::register(&engine).unwrap();
    assert_eq!(flaky.submit(41).wait().unwrap(), 42);
    assert_eq!(CALLS.load(Ordering::SeqCst), 3);
    assert_eq!(ops::flaky::NAME, "ops.flaky");
    assert_eq!(ops::r#type::NAME, "type");
    assert_eq!(ops::r#type::register(&engine).unwrap().submit("four").wait().unwrap(), 4);
    assert_eq!(local::register(&engine).unwrap().submit(3).wait().unwrap(), -3);
    {
        // `use` brings the fn and its registration type together.
        use ops::flaky;
        assert_eq!(flaky(1), 2);
        assert_eq!(flaky::NAME, "ops.flaky");
    }
    // The same name twice is refused.
    assert!(matches!(
        ops::flaky::register(&engine),
        Err(tokengate::RegisterError::DuplicateName(_))
    ));
}
