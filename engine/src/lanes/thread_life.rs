//! Lane threads: started and pinned at build, replaced when a call overruns its
//! deadline, and reused as spares when the overrunning call returns.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;

use super::help::LaneHelper;
use super::{priority, Lane, LaneInfo, Lanes, RunEnd};
use crate::placement::LanePriority;
use crate::token::with_helper;

impl Lanes {
    /// A deadline passed while `token_id` was running: if a lane is still running it,
    /// give its permit back, and start a replacement thread on the same core so the
    /// lane keeps serving. The stuck thread retires when the call returns.
    pub(crate) fn retire_stuck(self: &Arc<Self>, token_id: u64) {
        for (index, lane) in self.lanes.iter().enumerate() {
            let mut marks = lane.watch.lock().unwrap_or_else(|e| e.into_inner());
            let Some(at) = marks.iter().position(|w| w.token_id == token_id) else { continue };
            if marks[at].owner.load(Ordering::SeqCst) {
                // Its thread was replaced already (a call further out overran): the call
                // has timed out, and its batch gives its permit back when it returns.
                return;
            }
            let stuck = marks.remove(at);
            drop(marks);
            let replaced = self.replaced.fetch_add(1, Ordering::Relaxed) + 1;
            // At info only the 1st, 2nd, 4th, 8th…: calls that keep hanging (a soak)
            // must not flood the log; the count is in the engine's stop event.
            if replaced.is_power_of_two() {
                tracing::info!(
                    "lane {index}: token {token_id} overran its deadline; lane replaced \
                     ({replaced} so far)"
                );
            } else {
                tracing::debug!(
                    "lane {index}: token {token_id} overran its deadline; lane replaced"
                );
            }
            stuck.owner.store(true, Ordering::SeqCst);
            if let (Some((mut row, started)), Some(telemetry)) = (stuck.row, &self.telemetry) {
                // The hung call's row: timed out, having run until now. Its thread writes
                // none if it ever returns.
                row.run_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                row.end_to_end_ns = row.queue_wait_ns.saturating_add(row.run_ns);
                if let Some(sender) = telemetry.sender() {
                    telemetry.submit(&sender, vec![row]);
                }
            }
            self.assign_thread(index);
            // Released after the replacement exists, so a drain cannot finish (and stop
            // the lanes) in between.
            self.admission.release(stuck.permit, &stuck.queue);
            return;
        }
    }

    /// Gives lane `index` a thread: a spare if one is waiting, else a new one.
    fn assign_thread(self: &Arc<Self>, index: usize) {
        let floating = self.lanes[index].floating;
        loop {
            let spare = {
                let mut spares = self.spares.lock().unwrap_or_else(|e| e.into_inner());
                let kind = spares.iter().rposition(|(kind, _)| *kind == floating);
                kind.map(|at| spares.remove(at).1)
            };
            match spare {
                Some(spare) if spare.send(index).is_ok() => return,
                Some(_) => continue,
                None => break,
            }
        }
        if let Err(e) = spawn_lane(self, index, None) {
            tracing::error!("could not replace stuck lane {index}: {e}");
        }
    }

    /// Joins every lane thread except those stuck in an overrun call (detached).
    pub(crate) fn join(&self) {
        loop {
            let handles =
                std::mem::take(&mut *self.handles.lock().unwrap_or_else(|e| e.into_inner()));
            if handles.is_empty() {
                return;
            }
            for (stuck, handle) in handles {
                if !stuck.load(Ordering::SeqCst) {
                    let _ = handle.join();
                }
            }
        }
    }
}

/// Starts one thread per lane, pins each, and waits until all have reported in. If a
/// thread cannot be started, the ones already running are stopped and joined.
pub(crate) fn spawn_workers(lanes: &Arc<Lanes>) -> std::io::Result<()> {
    let (ready, reported) = mpsc::channel();
    for index in 0..lanes.len() {
        if let Err(e) = spawn_lane(lanes, index, Some(ready.clone())) {
            lanes.begin_shutdown();
            lanes.join();
            return Err(e);
        }
    }
    drop(ready);
    // Each thread reports once it has pinned itself; a thread that died first drops
    // its sender, which ends the wait too.
    for _ in reported.iter() {}
    Ok(())
}

/// A lane thread's stack (reserved; the kernel gives it pages as they are touched).
/// A call that waits on its children runs them on the same stack (`help.rs`), so
/// nesting depth costs stack: 16 MiB holds about 8,000 levels of a plain recursion in a
/// release build, eight times a default thread's. `RUST_MIN_STACK` may ask for more.
const LANE_STACK_BYTES: usize = 16 << 20;

fn lane_stack_bytes() -> usize {
    static BYTES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| {
        let asked = std::env::var("RUST_MIN_STACK").ok().and_then(|v| v.parse().ok());
        asked.unwrap_or(0).max(LANE_STACK_BYTES)
    })
}

/// Starts a thread that serves lane `index` (at start, or to replace a stuck one).
fn spawn_lane(
    lanes: &Arc<Lanes>,
    index: usize,
    ready: Option<mpsc::Sender<()>>,
) -> std::io::Result<()> {
    let stuck = Arc::new(AtomicBool::new(false));
    let handle = {
        let (lanes, stuck) = (Arc::clone(lanes), Arc::clone(&stuck));
        thread::Builder::new()
            .name(format!("tokengate-lane-{index}"))
            .stack_size(lane_stack_bytes())
            .spawn(move || lane_thread(lanes, index, ready, stuck))?
    };
    lanes.handles.lock().unwrap_or_else(|e| e.into_inner()).push((stuck, handle));
    Ok(())
}

/// A lane thread's life: serve a lane until shutdown; after an overrun, wait as a spare
/// to serve whichever lane next needs a replacement.
fn lane_thread(
    lanes: Arc<Lanes>,
    mut index: usize,
    mut ready: Option<mpsc::Sender<()>>,
    stuck: Arc<AtomicBool>,
) {
    loop {
        let lane = &lanes.lanes[index];
        *lane.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread::current());
        lane.tid.store(priority::current_tid(), Ordering::Relaxed);
        let info = pin_current(index, lane, &lanes);
        let core = if info.pinned { info.core.map_or(-1, |c| c as i32) } else { -1 };
        let _ = lane.info.set(info);
        let ctx = lanes.context(index, core, Arc::clone(&stuck));
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        let helper = LaneHelper { lanes: &lanes, ctx: &ctx };
        let end = ctx.enter(|| with_helper(&helper, || lanes.worker_loop(index, &ctx)));
        if end == RunEnd::Done {
            return;
        }
        // Back from an overrun: this thread no longer serves a lane.
        let (offer, assignment) = std::sync::mpsc::sync_channel(1);
        {
            let mut spares = lanes.spares.lock().unwrap_or_else(|e| e.into_inner());
            stuck.store(false, Ordering::SeqCst);
            if lanes.shutdown.load(Ordering::SeqCst) {
                return;
            }
            spares.push((lanes.lanes[index].floating, offer));
        }
        match assignment.recv() {
            Ok(next) => index = next,
            Err(_) => return,
        }
    }
}

static PIN_WARNING: std::sync::Once = std::sync::Once::new();
static PRIORITY_WARNING: std::sync::Once = std::sync::Once::new();

/// Sets the calling thread up for lane `index`: pinned to its core (a light lane, or any
/// lane of a pinned split), or allowed onto every core of the engine at the lowest
/// priority (a floating lane).
fn pin_current(index: usize, lane: &Lane, lanes: &Lanes) -> LaneInfo {
    let pinned = match (lanes.pin, lane.core) {
        (true, Some(core)) => {
            let ok = core_affinity::set_for_current(core);
            if !ok {
                PIN_WARNING.call_once(|| {
                    tracing::warn!("could not pin lane threads to cores; running unpinned");
                });
            }
            ok
        }
        _ => false,
    };
    let priority = if lane.floating {
        if lanes.pin {
            priority::allow_cores(&lanes.float_cores);
        }
        priority::lower_current(19)
    } else {
        priority::normal_current()
    };
    if matches!(priority, LanePriority::Refused | LanePriority::Nice(_)) {
        PRIORITY_WARNING.call_once(|| {
            tracing::warn!(
                "heavy lanes run at {priority} priority (SCHED_IDLE refused): light work \
                 no longer preempts heavy work at once"
            );
        });
    }
    let affinity = priority::current_affinity();
    match lane.core {
        Some(core) if pinned => {
            tracing::debug!("lane {index} ({}) pinned to core {}", lane.set, core.id)
        }
        _ => tracing::debug!(
            "lane {index} ({}) unpinned, affinity {affinity:?}, priority {priority}",
            lane.set
        ),
    }
    LaneInfo { index, set: lane.set, core: lane.core.map(|c| c.id), pinned, affinity, priority }
}
