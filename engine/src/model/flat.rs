//! The tree as the router walks it: a flat node array compiled from linfa's tree, every
//! index checked once at load, so prediction is a loop over a slice.

use linfa_trees::{DecisionTree, TreeNode};

use super::error::ModelError;
use super::format::MAX_TREE_DEPTH;
use crate::features::MODEL_FEATURES;

const LEAF: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct FlatNode {
    threshold: f64,
    /// Input index, or `LEAF`.
    feature: u32,
    /// Left child index; for a leaf, the class.
    left: u32,
    right: u32,
}

/// An internal node of a [`FlatTree`] (see [`FlatTree::split`]).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct TreeSplit {
    /// The index of the model input it reads ([`MODEL_FEATURES`]).
    pub input: usize,
    /// Inputs below it go left.
    pub threshold: f64,
    /// The left child's node index.
    pub left: usize,
    /// The right child's node index.
    pub right: usize,
}

/// A decision tree as a flat node array: node 0 is the root, and an input goes left
/// when `input[feature] < threshold` (linfa's prediction rule).
#[derive(Debug, Clone)]
pub struct FlatTree {
    nodes: Box<[FlatNode]>,
    depth: usize,
}

impl FlatTree {
    /// Compiles a linfa tree, checking every index it will follow.
    pub(crate) fn compile(
        tree: &DecisionTree<f64, usize>,
        classes: usize,
    ) -> Result<Self, ModelError> {
        let mut nodes = Vec::new();
        let depth = visit(tree.root_node(), 0, classes, &mut nodes)?;
        Ok(FlatTree { nodes: nodes.into_boxed_slice(), depth })
    }

    /// Nodes in the tree.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a tree has at least its root.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Longest root-to-leaf path (edges).
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// The class for one input vector: at most `depth` steps over the node slice.
    #[inline]
    pub fn predict(&self, inputs: &[f64; MODEL_FEATURES.len()]) -> usize {
        self.leaf_class(self.leaf(inputs))
    }

    /// The index of the leaf one input vector ends at (an index into the node array,
    /// which the file's leaf runtimes follow).
    #[inline]
    pub fn leaf(&self, inputs: &[f64; MODEL_FEATURES.len()]) -> usize {
        let mut index = 0usize;
        loop {
            let node = self.nodes[index];
            if node.feature == LEAF {
                return index;
            }
            let go_left = inputs[node.feature as usize] < node.threshold;
            index = if go_left { node.left } else { node.right } as usize;
        }
    }

    /// The split at node `index`: the input it reads, the threshold (an input below it
    /// goes left), and its left and right children; `None` for a leaf (for tools that
    /// walk the tree, such as the trainer's feature importance).
    pub fn split(&self, index: usize) -> Option<TreeSplit> {
        let node = self.nodes.get(index)?;
        (node.feature != LEAF).then_some(TreeSplit {
            input: node.feature as usize,
            threshold: node.threshold,
            left: node.left as usize,
            right: node.right as usize,
        })
    }

    /// The class of leaf `leaf` (from [`FlatTree::leaf`]).
    #[inline]
    pub fn leaf_class(&self, leaf: usize) -> usize {
        self.nodes[leaf].left as usize
    }
}

fn visit(
    node: &TreeNode<f64, usize>,
    depth: usize,
    classes: usize,
    nodes: &mut Vec<FlatNode>,
) -> Result<usize, ModelError> {
    if depth > MAX_TREE_DEPTH {
        return Err(ModelError::Corrupt(format!("tree deeper than {MAX_TREE_DEPTH}")));
    }
    let index = nodes.len();
    nodes.push(FlatNode { threshold: 0.0, feature: LEAF, left: 0, right: 0 });
    if let Some(class) = node.prediction() {
        if class >= classes {
            return Err(ModelError::Corrupt(format!("leaf predicts class {class} of {classes}")));
        }
        nodes[index].left = class as u32;
        return Ok(depth);
    }
    let (feature, threshold, _) = node.split();
    if feature >= MODEL_FEATURES.len() || !threshold.is_finite() {
        return Err(ModelError::Corrupt(format!("split on input {feature} at {threshold}")));
    }
    let children = node.children();
    let (Some(left), Some(right)) = (children[0].as_deref(), children[1].as_deref()) else {
        return Err(ModelError::Corrupt("an internal node lacks a child".into()));
    };
    let left_depth = visit(left, depth + 1, classes, nodes)?;
    let left_index = index + 1;
    let right_index = nodes.len();
    let right_depth = visit(right, depth + 1, classes, nodes)?;
    nodes[index] = FlatNode {
        threshold,
        feature: feature as u32,
        left: left_index as u32,
        right: right_index as u32,
    };
    Ok(left_depth.max(right_depth))
}
