//! The cost watch: between re-fits, an adaptive router follows what its calls
//! actually cost. Per watch cell (an operation's half-octave of sizes) it weighs the
//! evidence that recent calls ran in the other lane set's class than the one they are
//! placed in (a one-sided CUSUM test), and when that evidence is strong it moves the
//! cell there: one byte store, which the router reads per token. The cell moves back
//! the same way when its calls come back.
//!
//! A re-fit needs its window to fill with new rows before a shift outvotes the old
//! ones (a few hundred ms); the watch follows within about five of a cell's calls.
//! It only moves cells between lane sets: the re-fit still draws new boundaries and
//! classes. A re-fitted model takes over the moves its own tree does not make
//! ([`carry_moves`]), and the watch's evidence starts afresh on it.

use crate::features::NO_COST;
use std::collections::HashMap;
use std::sync::Arc;

use super::learned::{Spot, CELLS_PER_OP};
use super::LearnedRouter;
use crate::model::HEAVY_NS;
use crate::placement::LaneSet;

/// Evidence one call adds (or, running where it is placed, takes away): the log
/// likelihood ratio of "80% of this cell's calls run in the other set" against "20%".
const STEP: f32 = 1.386_294_4; // ln(0.8 / 0.2)
/// Evidence that moves a cell: five calls in a row in the other set, or more among
/// calls that ran where they were placed. A cell whose calls run in the other set one
/// time in five at random moves falsely once in about 2,500 calls (see the tests); one
/// whose calls are evenly split alternates, as either placement is then as good.
const MOVE_AT: f32 = 6.5;
/// Calls in a row that move a cell next to one that just moved the same way.
const NEIGHBOUR_CALLS: f32 = 2.0;
/// Weight of the newest run in a cell's mean log runtime per set.
const MEAN_WEIGHT: f32 = 0.2;

/// Recent calls of one cell.
#[derive(Debug, Clone, Copy, Default)]
struct CellCalls {
    /// Evidence that the cell's calls run in the other set (never below 0).
    evidence: f32,
    /// Running means of ln(run ns) of its heavy calls and of its light ones.
    ln_heavy: f32,
    ln_light: f32,
}

/// Per-cell statistics of the router they were gathered under.
#[derive(Debug, Default)]
pub(crate) struct CostWatch {
    router: Option<Arc<LearnedRouter>>,
    cells: Vec<CellCalls>,
    /// Per model operation and leaf: the same evidence over all the operation's sizes
    /// in that leaf. A rare band spreads its few calls over several cells; its leaf
    /// gathers them. (A map: operations × nodes grows with the square of a
    /// per-operation model.)
    groups: HashMap<(u32, usize), f32>,
}

impl CostWatch {
    /// Takes one observed call (engine operation, size hint, run time) into the
    /// statistics of its cell under `router`, and moves the cell if the evidence says
    /// so. Returns whether it moved. Statistics of an earlier router are dropped.
    pub(crate) fn observe(
        &mut self,
        router: &Arc<LearnedRouter>,
        op: u32,
        arg_size: u64,
        run_ns: u64,
    ) -> bool {
        if !self.router.as_ref().is_some_and(|r| Arc::ptr_eq(r, router)) {
            self.router = Some(Arc::clone(router));
            self.cells.clear();
            self.cells.resize(router.cells(), CellCalls::default());
            self.groups.clear();
        }
        // Cells are bands of sizes: where the model also reads cost features, a cell
        // mixes calls it tells apart, and moving it would undo them.
        let index = router.model_op(op);
        if index.is_none_or(|index| router.has_cost_features(index)) {
            return false;
        }
        let Some(spot) = router.spot(op, arg_size, &NO_COST) else { return false };
        let Some(calls) = self.cells.get_mut(spot.cell) else { return false };
        let ln = (run_ns.max(1) as f32).ln();
        let ran = if run_ns >= HEAVY_NS { LaneSet::Heavy } else { LaneSet::Light };
        let mean = match ran {
            LaneSet::Heavy => &mut calls.ln_heavy,
            _ => &mut calls.ln_light,
        };
        *mean = if *mean == 0.0 { ln } else { *mean + MEAN_WEIGHT * (ln - *mean) };
        let placed = router.class_lanes(router.spot_cost(spot).0);
        if placed == LaneSet::Remote {
            return false;
        }
        let step = if ran == placed { -STEP } else { STEP };
        let index = (spot.cell / CELLS_PER_OP) as u32;
        let evidence = self.groups.entry((index, spot.leaf)).or_insert(0.0);
        *evidence = (*evidence + step).max(0.0);
        if *evidence >= MOVE_AT {
            // The operation's calls in this leaf run in the other set: each of its
            // cells placed where this one is moves on its own next such call (this one
            // on this call).
            *evidence = 0.0;
            let leaf = spot.leaf;
            let cells = first_cell(index)..first_cell(index + 1);
            self.prime(router, index, cells, |other| other.leaf == leaf, placed, 1.0);
        }
        let calls = &mut self.cells[spot.cell];
        calls.evidence = (calls.evidence + step).max(0.0);
        if calls.evidence < MOVE_AT {
            return false;
        }
        calls.evidence = 0.0;
        let ln_ns = match ran {
            LaneSet::Heavy => calls.ln_heavy,
            _ => calls.ln_light,
        };
        // Back to the leaf's own class if that is in the set the calls ran in.
        let own = router.model().leaf_cost(spot.leaf).0;
        let class = if router.class_lanes(own) == ran {
            None
        } else {
            match nearest_class(router, ran, ln_ns.exp() as u64) {
                Some(class) => Some(class),
                None => return false,
            }
        };
        router.move_cell(spot.cell, class);
        // A shift seldom ends at a half-octave: the neighbouring cells placed where
        // this one was need only two calls of their own to follow it.
        let near = spot.cell.saturating_sub(1)..spot.cell + 2;
        let not_this = |other: Spot| other.cell != spot.cell;
        self.prime(router, index, near, not_this, placed, NEIGHBOUR_CALLS);
        true
    }

    /// Sets the evidence of those `cells` of operation `index` that `pick` picks and
    /// that are placed in `placed` so that `calls` calls in a row in the other set
    /// move them (cells not of the operation are skipped).
    fn prime(
        &mut self,
        router: &LearnedRouter,
        index: u32,
        cells: std::ops::Range<usize>,
        pick: impl Fn(Spot) -> bool,
        placed: LaneSet,
        calls: f32,
    ) {
        for cell in cells {
            let Some(spot) = router.cell_spot(index, cell) else { continue };
            if pick(spot) && router.class_lanes(router.spot_cost(spot).0) == placed {
                let evidence = &mut self.cells[cell].evidence;
                *evidence = evidence.max(MOVE_AT - (calls - 0.5) * STEP);
            }
        }
    }
}

/// The first watch cell of model operation `index`.
fn first_cell(index: u32) -> usize {
    index as usize * CELLS_PER_OP
}

/// Moves, in `new`, the cells that `old` has moved and `new`'s model places in the
/// other lane set: the watch's evidence is newer than any re-fit's rows. `ops` are the
/// engine's operation ids (cells are per model operation, and two models'
/// vocabularies may differ).
pub(crate) fn carry_moves(
    new: &LearnedRouter,
    old: &LearnedRouter,
    ops: impl Iterator<Item = u32>,
) {
    for op in ops {
        let (Some(from), Some(to)) = (old.model_op(op), new.model_op(op)) else {
            continue;
        };
        for half_octave in 0..CELLS_PER_OP {
            let old_cell = from as usize * CELLS_PER_OP + half_octave;
            let Some(class) = old.moved_class(old_cell) else { continue };
            let lanes = old.class_lanes(class);
            let cell = to as usize * CELLS_PER_OP + half_octave;
            let Some(spot) = new.cell_spot(to, cell) else { continue };
            if new.class_lanes(new.spot_cost(spot).0) == lanes {
                continue;
            }
            let median = old.model().header().classes[class].median_ns;
            if let Some(class) = nearest_class(new, lanes, median) {
                new.move_cell(cell, Some(class));
            }
        }
    }
}

/// The class of lane set `lanes` whose runtime range holds `ns`, else the one whose
/// median is nearest (in ratio).
fn nearest_class(router: &LearnedRouter, lanes: LaneSet, ns: u64) -> Option<usize> {
    let classes = &router.model().header().classes;
    let of_set = || (0..classes.len()).filter(|&c| router.class_lanes(c) == lanes);
    of_set().find(|&c| classes[c].min_ns <= ns && ns < classes[c].max_ns).or_else(|| {
        let distance = |c: usize| {
            let median = classes[c].median_ns.max(1) as f64;
            (median / ns.max(1) as f64).ln().abs()
        };
        of_set().min_by(|&a, &b| distance(a).total_cmp(&distance(b)))
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{CostWatch, CELLS_PER_OP};
    use crate::model::Model;
    use crate::router::{Features, LaneSet, LearnedRouter, Router, StaticRouter, Weight};

    const SORT: u32 = 0;
    const HEAVY_RUN: u64 = 300_000;
    const LIGHT_RUN: u64 = 2_000;

    /// The shipped model, with engine operation 0 = `sort`: it places `sort` of sizes
    /// below 4,025 in class 0 (light lanes).
    fn router() -> Arc<LearnedRouter> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/default.bin");
        let router = LearnedRouter::new(Model::load(path).unwrap(), StaticRouter::new(64));
        router.register_op(SORT, "sort", &[]);
        Arc::new(router)
    }

    fn lanes(router: &LearnedRouter, size: u64) -> LaneSet {
        router.route(&Features::new(SORT, Weight::Light, size)).lanes
    }

    #[test]
    fn a_cell_whose_calls_run_heavy_moves_to_the_heavy_lanes_and_back() {
        let (router, mut watch) = (router(), CostWatch::default());
        assert_eq!(lanes(&router, 300), LaneSet::Light);
        for call in 1..=4 {
            assert!(!watch.observe(&router, SORT, 300, HEAVY_RUN), "moved after {call} calls");
        }
        assert!(watch.observe(&router, SORT, 300, HEAVY_RUN), "five heavy calls in a row move it");
        let placed = router.route(&Features::new(SORT, Weight::Light, 300));
        assert_eq!(placed.lanes, LaneSet::Heavy);
        assert_eq!(placed.class, Some(2), "the heavy class whose range holds 300 µs");
        assert_eq!(router.moved_cells(), 1);
        // Other sizes, a cell away and more, are where the model put them.
        assert_eq!(lanes(&router, 100), LaneSet::Light);
        assert_eq!(lanes(&router, 5_000), LaneSet::Light);
        // Its calls come back: so does the cell, to the model's own class.
        for _ in 1..=4 {
            assert!(!watch.observe(&router, SORT, 300, LIGHT_RUN));
        }
        assert!(watch.observe(&router, SORT, 300, LIGHT_RUN));
        let placed = router.route(&Features::new(SORT, Weight::Light, 300));
        assert_eq!((placed.lanes, placed.class), (LaneSet::Light, Some(0)));
        assert_eq!(router.moved_cells(), 0);
    }

    /// Moves over `calls` calls of size 300 of which one in `every`, at random
    /// (seeded), runs heavy.
    fn moves_at_random(every: u64, calls: usize) -> usize {
        let (router, mut watch) = (router(), CostWatch::default());
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        (0..calls)
            .filter(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let run_ns = if state.is_multiple_of(every) { HEAVY_RUN } else { LIGHT_RUN };
                watch.observe(&router, SORT, 300, run_ns)
            })
            .count()
    }

    #[test]
    fn cells_whose_calls_seldom_run_heavy_seldom_move_and_evenly_split_ones_alternate() {
        // A false move takes about 50,000 calls at one in ten, 2,500 at one in five
        // (each is followed by a move back): this stream gives 8 and 162 moves.
        assert!(moves_at_random(10, 200_000) <= 20);
        assert!(moves_at_random(5, 200_000) <= 600);
        // Evenly split, either placement is as good: the cell alternates, every 30 or
        // so calls.
        assert!(moves_at_random(2, 200_000) >= 2_000);
    }

    #[test]
    fn sizes_in_a_moved_cells_leaf_follow_it_after_one_call_and_its_neighbours_after_two() {
        let (router, mut watch) = (router(), CostWatch::default());
        // The model's leaf boundary for `sort` is at 4,025: half-octave 23 (2,896 to
        // 4,095; 3,500 and the cell's centre) mostly below it, 24 (4,869) above, with
        // 26 (10,000) in the same leaf as 24.
        for _ in 0..5 {
            watch.observe(&router, SORT, 3_500, HEAVY_RUN);
        }
        assert_eq!(lanes(&router, 3_500), LaneSet::Heavy);
        // The leaf's calls ran heavy: each of its sizes moves on its first heavy call.
        assert!(watch.observe(&router, SORT, 100, HEAVY_RUN));
        assert!(watch.observe(&router, SORT, 8, HEAVY_RUN));
        // Across the boundary, the next cell moves after two calls.
        assert!(!watch.observe(&router, SORT, 4_869, HEAVY_RUN));
        assert!(watch.observe(&router, SORT, 4_869, HEAVY_RUN));
        // Two calls are not enough two cells away in the other leaf.
        assert!(!watch.observe(&router, SORT, 10_000, HEAVY_RUN));
        assert!(!watch.observe(&router, SORT, 10_000, HEAVY_RUN));
        assert_eq!(
            [8, 100, 3_500, 4_869, 10_000, 50].map(|size| lanes(&router, size)),
            [0, 1, 2, 3, 4, 5].map(|i| if i < 4 { LaneSet::Heavy } else { LaneSet::Light })
        );
    }

    #[test]
    fn moves_are_carried_to_a_model_whose_vocabulary_is_in_another_order() {
        const PI_TERM: u32 = 1;
        let (old, mut watch) = (router(), CostWatch::default());
        old.register_op(PI_TERM, "pi_term", &[]);
        for _ in 0..5 {
            watch.observe(&old, SORT, 300, HEAVY_RUN);
        }
        // The same tree, its vocabulary reversed: `sort` is operation 4, not 1.
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/default.bin");
        let (mut header, tree) = crate::model::decode(&std::fs::read(path).unwrap()).unwrap();
        header.ops.reverse();
        let leaf_ns = Model::load(path).unwrap().leaf_runtimes().to_vec();
        let bytes = crate::model::encode(&header, &tree, &leaf_ns).unwrap();
        let new = LearnedRouter::new(Model::from_bytes(&bytes).unwrap(), StaticRouter::new(64));
        new.register_op(SORT, "sort", &[]);
        new.register_op(PI_TERM, "pi_term", &[]);
        assert_ne!(new.model_op(SORT), old.model_op(SORT));
        super::carry_moves(&new, &old, [SORT, PI_TERM].into_iter());
        let lanes_of = |op| new.route(&Features::new(op, Weight::Light, 300)).lanes;
        assert_eq!((lanes_of(SORT), lanes_of(PI_TERM)), (LaneSet::Heavy, LaneSet::Light));
        assert_eq!(new.moved_cells(), 1);
    }

    #[test]
    fn a_new_router_keeps_the_moves_its_model_does_not_already_make() {
        let (old, mut watch) = (router(), CostWatch::default());
        for _ in 0..5 {
            watch.observe(&old, SORT, 300, HEAVY_RUN);
        }
        // A cell "moved" to where the model already places it (sizes 0) is not carried.
        old.move_cell(old.model_op(SORT).unwrap() as usize * CELLS_PER_OP, Some(0));
        let new = router();
        super::carry_moves(&new, &old, [SORT, 7].into_iter());
        assert_eq!((lanes(&new, 300), lanes(&new, 0)), (LaneSet::Heavy, LaneSet::Light));
        assert_eq!(new.moved_cells(), 1);
        // Statistics of the old router are dropped for the new one: five calls again.
        for _ in 1..=4 {
            assert!(!watch.observe(&new, SORT, 300, LIGHT_RUN));
        }
        assert!(watch.observe(&new, SORT, 300, LIGHT_RUN));
        assert_eq!(lanes(&new, 300), LaneSet::Light);
    }
}
