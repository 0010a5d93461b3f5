//! The learned router: the cost model's predicted class decides the placement.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};

use super::{EwmaRouter, Features, LaneSet, Placement, RouteSource, Router, StaticRouter};
use crate::features::{model_inputs, CostInputs, NO_COST};
use crate::model::Model;

/// Most operations a learned router maps (ids beyond it fall back to tags).
pub const MAX_OPS: usize = 4_096;
const UNKNOWN_OP: u32 = u32::MAX;
/// Watch cells per operation: half-octaves of the size hint (the last also holds the
/// few sizes past it).
pub(crate) const CELLS_PER_OP: usize = 128;

/// Where a token is placed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Spot {
    /// The model leaf it ends at.
    pub(crate) leaf: usize,
    /// Its watch cell: its operation and the half-octave of its size hint. The watch
    /// moves cells rather than leaves: a leaf may span sizes that drifted and sizes
    /// that did not. (A cell may in turn span a leaf boundary; where the watch needs
    /// one leaf for a whole cell, it takes its centre's.)
    pub(crate) cell: usize,
}

/// The watch cell of model operation `index` at `log2_size` (log2(size + 1)).
#[inline]
fn cell(index: u32, log2_size: f64) -> usize {
    index as usize * CELLS_PER_OP + ((log2_size * 2.0) as usize).min(CELLS_PER_OP - 1)
}

/// Places each token by the class a fitted cost model predicts from its features;
/// operations the model never saw (or knows with other cost-feature names) are placed
/// by the running averages of an [`EwmaRouter`] over the fallback's tags.
#[derive(Debug)]
pub struct LearnedRouter {
    model: Model,
    /// Engine op id → the model's vocabulary index.
    op_index: Box<[AtomicU32]>,
    /// Class id → placement, copied out of the header for a short hot path.
    placements: Box<[(LaneSet, u32)]>,
    /// For operations the model does not know: their costs learned online, their tags
    /// until measured.
    fallback: EwmaRouter,
    /// Per watch cell (an operation's half-octave of sizes, see [`Spot`]): 0, or 1 + the
    /// class a [`CostWatch`](super::CostWatch) moved the cell to (only an adaptive
    /// router's watch moves cells).
    moved: Box<[AtomicU8]>,
    /// Set by the first move: until then routing skips the cell lookup.
    any_moved: AtomicBool,
}

impl LearnedRouter {
    /// A router over `model`. Operations it does not know are placed as the default
    /// no-model router places them ([`EwmaRouter`]: by their cost measured online, by
    /// `fallback`, their tags, until measured).
    pub fn new(model: Model, fallback: StaticRouter) -> Self {
        let fallback = EwmaRouter::new(fallback);
        let placements = model.header().classes.iter().map(|c| (c.lanes, c.batch)).collect();
        let op_index = (0..MAX_OPS).map(|_| AtomicU32::new(UNKNOWN_OP)).collect();
        let cells = model.header().ops.len() * CELLS_PER_OP;
        let moved = (0..cells).map(|_| AtomicU8::new(0)).collect();
        let any_moved = AtomicBool::new(false);
        LearnedRouter { model, op_index, placements, fallback, moved, any_moved }
    }

    /// Where a token of engine operation `op` with this size hint and these cost
    /// features is placed from: its leaf and its watch cell; `None` if the model does
    /// not know the operation (its tokens are placed by the running averages).
    #[inline]
    pub(crate) fn spot(&self, op: u32, arg_size: u64, cost: &CostInputs) -> Option<Spot> {
        let index = self.model_op(op)?;
        let inputs = model_inputs(index, arg_size, cost);
        let leaf = self.model.tree().leaf(&inputs);
        Some(Spot { leaf, cell: cell(index, inputs[1]) })
    }

    /// The class and runtime (ns) a token at `spot` is placed by: the model's, or the
    /// class the watch moved its cell to (with that class's median runtime).
    #[inline]
    pub(crate) fn spot_cost(&self, spot: Spot) -> (usize, u64) {
        match self.moved_class(spot.cell) {
            None => self.model.leaf_cost(spot.leaf),
            Some(class) => (class, self.model.header().classes[class].median_ns),
        }
    }

    /// The class the watch moved cell `cell` to, if it did.
    #[inline]
    pub(super) fn moved_class(&self, cell: usize) -> Option<usize> {
        match self.moved.get(cell)?.load(Ordering::Relaxed) {
            0 => None,
            moved => Some(usize::from(moved - 1)),
        }
    }

    /// The spot of a token of model operation `index` in the middle of watch cell
    /// `cell`'s sizes (`None`: not a cell of that operation).
    pub(crate) fn cell_spot(&self, index: u32, cell: usize) -> Option<Spot> {
        let half_octave = cell.checked_sub(index as usize * CELLS_PER_OP)?;
        if half_octave >= CELLS_PER_OP {
            return None;
        }
        let log2_size = (half_octave as f64 + 0.5) / 2.0;
        let size = (log2_size.exp2() - 1.0).max(0.0) as u64;
        let inputs = model_inputs(index, size, &NO_COST);
        Some(Spot { leaf: self.model.tree().leaf(&inputs), cell })
    }

    /// Whether the model places model operation `index` by cost features too: a watch
    /// cell (a band of sizes) then mixes calls the model tells apart, and the watch
    /// leaves it alone.
    pub(crate) fn has_cost_features(&self, index: u32) -> bool {
        !self.model.header().cost_features(index as usize).is_empty()
    }

    /// The model operation index of engine operation `op`, if the model knows it.
    #[inline]
    pub(crate) fn model_op(&self, op: u32) -> Option<u32> {
        let index = self.op_index.get(op as usize)?.load(Ordering::Relaxed);
        (index != UNKNOWN_OP).then_some(index)
    }

    /// The lane set of `class`.
    pub(crate) fn class_lanes(&self, class: usize) -> LaneSet {
        self.placements[class].0
    }

    /// Watch cells (see [`Spot::cell`]), [`CELLS_PER_OP`] per model operation.
    pub(crate) fn cells(&self) -> usize {
        self.moved.len()
    }

    /// Places the tokens of watch cell `cell` by `class` from now on (`None`: by their
    /// leaves' classes again).
    pub(crate) fn move_cell(&self, cell: usize, class: Option<usize>) {
        // Models have at most 64 classes (checked at load).
        let value = class.map_or(0, |class| u8::try_from(class + 1).unwrap_or(u8::MAX));
        self.moved[cell].store(value, Ordering::Relaxed);
        self.any_moved.store(true, Ordering::Relaxed);
    }

    /// Watch cells placed by another class than the model's now.
    pub(crate) fn moved_cells(&self) -> usize {
        (0..self.moved.len()).filter(|&cell| self.moved_class(cell).is_some()).count()
    }

    /// The model it predicts with.
    pub fn model(&self) -> &Model {
        &self.model
    }
}

impl Router for LearnedRouter {
    #[inline]
    fn route(&self, features: &Features) -> Placement {
        let Some(index) = self.model_op(features.op) else {
            return self.fallback.route(features);
        };
        let inputs = model_inputs(index, features.arg_size, &features.cost);
        let leaf = self.model.tree().leaf(&inputs);
        let (class, predicted_ns) = match self.any_moved.load(Ordering::Relaxed) {
            false => self.model.leaf_cost(leaf),
            true => self.spot_cost(Spot { leaf, cell: cell(index, inputs[1]) }),
        };
        let (lanes, batch) = self.placements[class];
        let class = Some(class as u8);
        Placement { lanes, batch, class, predicted_ns, source: RouteSource::Model }
    }

    fn register_op(&self, op: u32, name: &str, cost_features: &[String]) {
        let Some(slot) = self.op_index.get(op as usize) else { return };
        let Some(index) = self.model.op_index(name) else {
            tracing::info!(
                "the cost model {:08x} does not know operation {name:?}: its running averages \
                 place it until a model fitted on its logs is loaded",
                self.model.version()
            );
            return;
        };
        let fitted = self.model.header().cost_features(index as usize);
        if fitted != cost_features {
            tracing::warn!(
                "the cost model knows operation {name:?} with cost features {fitted:?}, but it \
                 was registered with {cost_features:?}: the model does not place it (its \
                 running averages do); refit on logs of the registered features"
            );
            return;
        }
        slot.store(index, Ordering::Relaxed);
    }

    fn model_version(&self) -> u32 {
        self.model.version()
    }

    fn remote_min_ns(&self) -> Option<u64> {
        self.model.remote_min_ns()
    }

    fn classes(&self) -> Vec<crate::model::ClassPolicy> {
        self.model.header().classes.clone()
    }

    fn is_pure(&self) -> bool {
        true
    }
}
