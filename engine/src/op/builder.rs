//! Registering an operation with options.

use std::sync::Arc;
use std::time::Duration;

use super::control::OpControl;
use super::dedupe::Dedupe;
use super::env::OpEnv;
use super::registry::Registry;
use super::retry::RetryPolicy;
use super::state::OpShared;
use super::state::{BoxFn, Context, OpOptions};
use super::Operation;
use crate::error::{RegisterError, TokenError};
use crate::features::{MAX_COST_FEATURES, NO_COST};
use crate::placement::Weight;
use crate::remote::wire::Codec;
use crate::remote::RemoteServe;

/// Registers one operation with options; from [`Engine::operation`](crate::Engine::operation).
///
/// The hooks given here (size hint, cost features, locality and dedupe keys, argument
/// bytes) run on the submitting thread, and may run more than once per call: keep them
/// cheap and pure functions of the argument. One that panics fails its own call as
/// [`TokenError::Panicked`] (naming the hook) before it is queued; the rest of the
/// submit goes on. (`arg_bytes` runs before admission: its panic reaches the caller.)
pub struct OperationBuilder<'e, A> {
    pub(super) env: &'e Arc<OpEnv>,
    pub(super) registry: &'e Registry,
    pub(super) name: String,
    pub(super) weight: Weight,
    pub(super) options: OpOptions<A>,
}

impl<A> std::fmt::Debug for OperationBuilder<'_, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperationBuilder")
            .field("name", &self.name)
            .field("weight", &self.weight)
            .field("timeout", &self.options.timeout)
            .field("retry", &self.options.retry)
            .field("queue_limit", &self.options.queue_limit)
            .finish()
    }
}

impl<A: Clone> OperationBuilder<'_, A> {
    /// Runs failed calls again under `policy` (the argument is cloned for each retry).
    /// Each attempt is logged with its number; the token resolves once, with the last
    /// attempt's outcome.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.options.retry = Some(policy);
        self.options.clone_arg = Some(A::clone);
        self
    }
}

impl<'e, A: Send + 'static> OperationBuilder<'e, A> {
    /// A cheap function giving each argument's size (bytes, elements, iterations…):
    /// the routers' main input besides the operation itself (the running averages are
    /// kept per half-octave of it; a fitted model splits on it). Any closure works,
    /// capturing state included.
    pub fn size_hint(mut self, hint: impl Fn(&A) -> u64 + Send + Sync + 'static) -> Self {
        self.options.size_hint = Some(Box::new(hint));
        self
    }

    /// Up to [`MAX_COST_FEATURES`] named numbers computed from each argument that say
    /// what a call costs where its size alone does not: the share of non-ASCII bytes a
    /// regex must decode, a document's nesting depth, the decompressed length a gzip
    /// trailer states. They are logged with each call (telemetry columns `cost_0`…), a
    /// model fitted on those logs splits on them for this operation (`trainer inspect`
    /// shows which earned their keep), and the learned router computes them at submit.
    /// Operations without them pay nothing for them.
    ///
    /// The closure runs on the submitting thread for every call: keep it cheap (a scan
    /// of a prefix, a header field). Non-finite values count as 0. Names are 1 to 32
    /// bytes of letters, digits and `_`, distinct; a bad name makes
    /// [`register`](Self::register) fail with [`RegisterError::BadCostFeatures`](crate::RegisterError::BadCostFeatures).
    /// A model whose features for this operation have other names does not place it
    /// (its calls go as the running averages place them) and says so in a warning.
    ///
    /// ```
    /// # let engine = tokengate::Engine::builder().workers(1).build()?;
    /// let search = engine
    ///     .operation::<String>("search", tokengate::Weight::Light)
    ///     .size_hint(|text| text.len() as u64)
    ///     .cost_features(["non_ascii", "lines"], |text| {
    ///         let sample = &text.as_bytes()[..text.len().min(256)];
    ///         let non_ascii = sample.iter().filter(|b| !b.is_ascii()).count();
    ///         [non_ascii as f64 / sample.len().max(1) as f64, text.lines().count() as f64]
    ///     })
    ///     .register(|text| text.contains("needle"))?;
    /// assert!(!search.submit("haystack".to_string()).wait()?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cost_features<const N: usize>(
        mut self,
        names: [&str; N],
        features: impl Fn(&A) -> [f64; N] + Send + Sync + 'static,
    ) -> Self {
        const { assert!(N >= 1 && N <= MAX_COST_FEATURES, "an operation has 1 to 4 cost features") };
        let bad = |name: &str| {
            name.is_empty()
                || name.len() > 32
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        };
        if let Some(name) = names.iter().find(|name| bad(name)) {
            self.options.invalid = Some(crate::RegisterError::BadCostFeatures(format!(
                "cost feature name {name:?} must be 1 to 32 letters, digits or '_'"
            )));
        } else if (1..N).any(|i| names[..i].contains(&names[i])) {
            self.options.invalid = Some(crate::RegisterError::BadCostFeatures(format!(
                "cost feature names {names:?} repeat a name"
            )));
        }
        self.options.cost_names = names.iter().map(|name| name.to_string()).collect();
        self.options.cost = Some(Box::new(move |arg| {
            let values = features(arg);
            let mut inputs = NO_COST;
            for (input, value) in inputs.iter_mut().zip(values) {
                *input = if value.is_finite() { value } else { 0.0 };
            }
            inputs
        }));
        self
    }

    /// Each call resolves as [`TokenError::TimedOut`] once it has run for `timeout`,
    /// even if the function keeps running: the late result is discarded, and the lane
    /// stuck in it is replaced at once by a fresh thread on the same core (the stuck one
    /// retires when the call returns; see [`EngineStats::stuck_lanes`](crate::EngineStats::stuck_lanes)). Waiting in the
    /// queue does not count: admission bounds that. Timed calls run one per batch.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout = Some(timeout);
        self
    }

    /// Heap bytes an argument owns (a `Vec`'s buffer, a `String`'s text), counted
    /// against the engine's [`memory_capacity`](crate::EngineBuilder::memory_capacity).
    pub fn arg_bytes(mut self, bytes: fn(&A) -> usize) -> Self {
        self.options.arg_bytes = Some(bytes);
        self
    }

    /// Locality: calls with equal `key(arg)` run on the same lane while any of them is
    /// in flight (for caches and per-key state). Such calls are queued on that lane
    /// alone, one per batch, and other lanes never take them.
    pub fn locality(mut self, key: fn(&A) -> u64) -> Self {
        self.options.locality = Some(key);
        self
    }

    /// At most `limit` tokens of this operation admitted and unprocessed at once, so it
    /// cannot take the whole engine's capacity: `submit` waits, `try_submit` is
    /// rejected as overloaded.
    pub fn queue_limit(mut self, limit: usize) -> Self {
        self.options.queue_limit = Some(limit.max(1));
        self
    }

    /// Registers an infallible function (see [`Engine::register`](crate::Engine::register)).
    pub fn register<R, F>(self, f: F) -> Result<Operation<A, R>, RegisterError>
    where
        R: Send + 'static,
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        let f: BoxFn<A, R> = Box::new(move |a, _| Ok(f(a)));
        self.register_full(f, None, None)
    }

    /// Makes the operation remote-capable: its tokens may run on workers on other
    /// machines (the `remote` lane set, over NATS JetStream; see
    /// [`remote`](crate::remote)). The argument and the result must be
    /// serde-serializable; they cross the wire as bincode. A worker registers the same
    /// operation under the same name. Without a NATS link the operation runs locally
    /// like any other.
    ///
    /// ```
    /// # let engine = tokengate::Engine::builder().build()?;
    /// let square = engine
    ///     .operation("square", tokengate::Weight::Light)
    ///     .remote()
    ///     .register(|x: u64| x * x)?;
    /// assert_eq!(square.submit(7).wait()?, 49);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn remote(self) -> RemoteBuilder<'e, A>
    where
        A: serde::Serialize + serde::de::DeserializeOwned,
    {
        RemoteBuilder { inner: self }
    }

    /// Makes calls with equal `key(arg)` safe to repeat: while one is in flight, a
    /// duplicate does not run again; it resolves with a copy of the first call's result
    /// (so results must be `Clone`). Register through the returned builder.
    pub fn dedupe(self, key: fn(&A) -> u64) -> DedupeBuilder<'e, A> {
        DedupeBuilder { inner: self, key }
    }

    /// Registers a function returning `Result` (see [`Engine::register_fallible`](crate::Engine::register_fallible)).
    pub fn register_fallible<R, E, F>(self, f: F) -> Result<Operation<A, R>, RegisterError>
    where
        R: Send + 'static,
        E: std::fmt::Display,
        F: Fn(A) -> Result<R, E> + Send + Sync + 'static,
    {
        let f: BoxFn<A, R> =
            Box::new(move |a, _| f(a).map_err(|e| TokenError::Failed(e.to_string())));
        self.register_full(f, None, None)
    }

    /// Registers a function that also receives its run's [`Context`], to notice a
    /// passed deadline and stop early (cooperative cancellation).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # let engine = tokengate::Engine::builder().build()?;
    /// let spin = engine
    ///     .operation("spin", tokengate::Weight::Heavy)
    ///     .timeout(Duration::from_millis(20))
    ///     .register_with_context(|(), cx: &tokengate::Context<'_>| {
    ///         while !cx.is_cancelled() {
    ///             std::thread::sleep(Duration::from_millis(1));
    ///         }
    ///     })?;
    /// assert_eq!(spin.submit(()).wait(), Err(tokengate::TokenError::TimedOut));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn register_with_context<R, F>(self, f: F) -> Result<Operation<A, R>, RegisterError>
    where
        R: Send + 'static,
        F: Fn(A, &Context<'_>) -> R + Send + Sync + 'static,
    {
        let f: BoxFn<A, R> = Box::new(move |a, cx| Ok(f(a, cx)));
        self.register_full(f, None, None)
    }
}

/// Registers an operation whose duplicate calls share one run; from
/// [`OperationBuilder::dedupe`].
///
/// ```
/// # let engine = tokengate::Engine::builder().build()?;
/// let fetch = engine
///     .operation("fetch", tokengate::Weight::Medium)
///     .dedupe(|url: &String| url.len() as u64) // any cheap function of the argument
///     .register(|url: String| format!("body of {url}"))?;
/// let (a, b) = (fetch.submit("a.example".into()), fetch.submit("b.example".into()));
/// assert_eq!(a.wait()?, "body of a.example");
/// # let _ = b.wait()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct DedupeBuilder<'e, A> {
    inner: OperationBuilder<'e, A>,
    key: fn(&A) -> u64,
}

impl<A> std::fmt::Debug for DedupeBuilder<'_, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DedupeBuilder").field("operation", &self.inner).finish()
    }
}

impl<'e, A: Send + 'static> DedupeBuilder<'e, A> {
    /// Registers an infallible function (see [`Engine::register`](crate::Engine::register)).
    pub fn register<R, F>(self, f: F) -> Result<Operation<A, R>, RegisterError>
    where
        R: Clone + Send + 'static,
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        self.register_with_context(move |a, _| f(a))
    }

    /// Registers a function returning `Result` (see [`Engine::register_fallible`](crate::Engine::register_fallible)).
    pub fn register_fallible<R, E, F>(self, f: F) -> Result<Operation<A, R>, RegisterError>
    where
        R: Clone + Send + 'static,
        E: std::fmt::Display,
        F: Fn(A) -> Result<R, E> + Send + Sync + 'static,
    {
        let f: BoxFn<A, R> =
            Box::new(move |a, _| f(a).map_err(|e| TokenError::Failed(e.to_string())));
        let op = self.inner;
        let dedupe = Some(Dedupe::new(self.key, R::clone));
        op.register_full(f, dedupe, None)
    }

    /// Registers a function that also receives its run's [`Context`].
    pub fn register_with_context<R, F>(self, f: F) -> Result<Operation<A, R>, RegisterError>
    where
        R: Clone + Send + 'static,
        F: Fn(A, &Context<'_>) -> R + Send + Sync + 'static,
    {
        let f: BoxFn<A, R> = Box::new(move |a, cx| Ok(f(a, cx)));
        let op = self.inner;
        let dedupe = Some(Dedupe::new(self.key, R::clone));
        op.register_full(f, dedupe, None)
    }
}

impl<A: Send + 'static> OperationBuilder<'_, A> {
    /// Registers `f` as what `builder` describes; `remote`: it may run on remote
    /// workers, and this engine serves it when it is a worker.
    pub(super) fn register_full<R: Send + 'static>(
        self,
        f: BoxFn<A, R>,
        dedupe: Option<Dedupe<A, R>>,
        remote: Option<Codec<A, R>>,
    ) -> Result<Operation<A, R>, RegisterError> {
        let OperationBuilder { env, registry, name, weight, mut options } = self;
        let name = name.as_str();
        if let Some(invalid) = options.invalid.take() {
            return Err(invalid);
        }
        let id = registry.claim_name(name, &options.cost_names)?;
        env.router.register_op(id, name, &options.cost_names);
        let serves = remote.is_some();
        let inner =
            Arc::new(OpShared::new(Arc::clone(env), id, name, weight, options, f, dedupe, remote));
        registry.add_op(Arc::clone(&inner) as Arc<dyn OpControl>, &env.lanes);
        let op = Operation { inner };
        if serves {
            registry.add_served(Arc::new(op.clone()) as Arc<dyn RemoteServe>);
        }
        Ok(op)
    }
}

impl<'e, A> OperationBuilder<'e, A> {
    pub(crate) fn new(
        env: &'e Arc<OpEnv>,
        registry: &'e Registry,
        name: &str,
        weight: Weight,
    ) -> Self {
        let options = OpOptions::default();
        OperationBuilder { env, registry, name: name.to_string(), weight, options }
    }
}

/// Registers a remote-capable operation: made by
/// [`OperationBuilder::remote`](crate::OperationBuilder::remote). Its argument and result
/// must be serde-serializable; the registration methods mirror the local ones.
pub struct RemoteBuilder<'e, A> {
    pub(super) inner: OperationBuilder<'e, A>,
}

impl<A> std::fmt::Debug for RemoteBuilder<'_, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteBuilder").field("operation", &self.inner).finish()
    }
}
