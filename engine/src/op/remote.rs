//! Remote-capable operations: the codec of their arguments and results, their tokens
//! while a worker on another machine runs them, and the worker's side of a call.
//!
//! A remote token holds its admission permit until it resolves, so remote work counts
//! against the same capacity as local work (backpressure, not an unbounded backlog).
//!
//! Without the `nats` feature there is no link: the codec is kept (registration is
//! the same in every build) but nothing crosses a wire.
#![cfg_attr(not(feature = "nats"), allow(dead_code))]

use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::builder::RemoteBuilder;
use super::state::{nanos, BoxFn, Context};
use super::Operation;
use crate::admission::Permit;
use crate::error::{RegisterError, RejectReason, TokenError};
use crate::remote::wire::{self, Codec, WireOutcome};
use crate::remote::{CallError, RemoteServe, Reply, ReplyFuture};
use crate::token::Start;

impl<A> RemoteBuilder<'_, A>
where
    A: Serialize + DeserializeOwned + Send + 'static,
{
    /// Tags the operation "remote": unless a model places it (by tags or running
    /// averages, the default), its tokens go to remote workers whenever the link can
    /// take them, whatever the placement policy. A model's placement and the control
    /// port's pin still win.
    pub fn preferred(mut self) -> Self {
        self.inner.options.remote_preferred = true;
        self
    }

    /// Registers `f`; see [`OperationBuilder::register`](crate::OperationBuilder::register).
    pub fn register<R, F>(self, f: F) -> Result<Operation<A, R>, RegisterError>
    where
        R: Serialize + DeserializeOwned + Send + 'static,
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        self.finish(Box::new(move |a, _| Ok(f(a))))
    }

    /// Registers a fallible `f`; see
    /// [`OperationBuilder::register_fallible`](crate::OperationBuilder::register_fallible).
    pub fn register_fallible<R, E, F>(self, f: F) -> Result<Operation<A, R>, RegisterError>
    where
        R: Serialize + DeserializeOwned + Send + 'static,
        E: std::fmt::Display,
        F: Fn(A) -> Result<R, E> + Send + Sync + 'static,
    {
        self.finish(Box::new(move |a, _| f(a).map_err(|e| TokenError::Failed(e.to_string()))))
    }

    /// Registers `f` with its [`Context`]; see
    /// [`OperationBuilder::register_with_context`](crate::OperationBuilder::register_with_context).
    pub fn register_with_context<R, F>(self, f: F) -> Result<Operation<A, R>, RegisterError>
    where
        R: Serialize + DeserializeOwned + Send + 'static,
        F: Fn(A, &Context<'_>) -> R + Send + Sync + 'static,
    {
        self.finish(Box::new(move |a, cx| Ok(f(a, cx))))
    }

    fn finish<R>(self, f: BoxFn<A, R>) -> Result<Operation<A, R>, RegisterError>
    where
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let name = &self.inner.name;
        // The name becomes a NATS subject token and a consumer name.
        if !name.chars().all(wire::name_char) {
            return Err(RegisterError::BadName(format!(
                "{name} (a remote-capable operation's name may hold only ASCII letters, digits, \
                 '_' and '-')"
            )));
        }
        self.inner.register_full(f, None, Some(Codec::new()))
    }
}

impl<A: Send + 'static, R: Send + 'static> RemoteServe for Operation<A, R> {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn call(&self, arg: &[u8], delivery: u64) -> Result<ReplyFuture, CallError> {
        let codec = self.inner.remote.as_ref().expect("served operations have a codec");
        let arg = (codec.decode_arg)(arg).map_err(CallError::BadArgument)?;
        if self.inner.env.admission.is_closed() {
            return Err(CallError::Rejected(RejectReason::ShuttingDown));
        }
        let encode = codec.encode_result;
        let op = self.clone();
        Ok(Box::pin(async move {
            // Waits for room like any async caller (the worker reports progress
            // meanwhile); a stopping engine rejects it, and the call goes back.
            let started = Instant::now();
            let delivery = delivery.clamp(1, u64::from(u8::MAX)) as u8;
            let permit = Permit::new(1, op.inner.bytes_of(&arg));
            let admitted = op.inner.env.admission.acquire(permit, &op.inner.queue).await;
            let result = op.admit_one_at(admitted, arg, Start::Served { delivery }).await;
            let run_ns = nanos(started.elapsed());
            let retry_after =
                result.as_ref().err().and_then(|e| op.inner.redelivery_delay(delivery, e));
            let (outcome, payload) = match result {
                Ok(value) => match encode(&value) {
                    Ok(bytes) => (WireOutcome::Completed, bytes),
                    Err(e) => (WireOutcome::Failed, format!("result not encodable: {e}").into()),
                },
                Err(TokenError::Failed(message)) => (WireOutcome::Failed, message.into_bytes()),
                Err(TokenError::Panicked { message }) => {
                    (WireOutcome::Panicked, message.into_bytes())
                }
                Err(TokenError::TimedOut) => (WireOutcome::TimedOut, Vec::new()),
                Err(TokenError::Cancelled { .. } | TokenError::Rejected { .. }) => return None,
            };
            Some(Reply { outcome, payload, run_ns, retry_after })
        }))
    }
}
