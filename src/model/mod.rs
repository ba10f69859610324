//! The types every layer shares (what an export is, its status and options, what a dataset
//! is), below `db`, `export` and `api`, which all use them and none of which they use.

pub mod dataset;
pub mod export;
pub mod key;
pub mod keyset;
pub mod link;
pub mod spec;
pub mod types;
pub mod webhook;

pub use dataset::{Column, Dataset, Datasets};
pub use export::{Checkpoint, ExportRecord, ExportStatus, KeyRange, RunRecord, StoredSpec};
pub use key::ApiKey;
pub use keyset::{Key, KeyColumn, KeyKind};
pub use spec::ExportSpec;
