//! The model file's layout versions and limits.

pub(super) const MAGIC: &[u8; 8] = b"TKGMODEL";
/// Version of the file layout (2: the training info records the fitted dispatch
/// overhead; 3: and the fitted remote overhead; 4: and each leaf's mean runtime; 5: and
/// each operation's cost-feature names). Files of versions 2 to 4 still load.
pub const FORMAT_VERSION: u16 = 5;
/// The layout before cost-feature names.
pub(super) const FORMAT_V4: u16 = 4;
/// The oldest layout this build reads (no remote overhead; see `HeaderV2`).
pub(super) const FORMAT_V2: u16 = 2;
/// The layout before leaf runtimes.
pub(super) const FORMAT_V3: u16 = 3;
pub(super) const PREFIX_LEN: usize = 16;
pub(super) const DECODE_LIMIT: usize = 64 << 20;
/// Deepest tree the engine accepts (fits bound theirs far below this).
pub const MAX_TREE_DEPTH: usize = 64;
