//! Test support shared by every test binary and the bench, one copy of each helper: a
//! database per test and the app in-process ([`helpers`]), the real binary as a process
//! ([`process`]), and the API over HTTP ([`client`]), a real S3-compatible object store ([`s3`]), independent readers of
//! JSON Lines and Parquet files ([`formats`]).
//!
//! Included with `#[path = "../support/mod.rs"] mod support;`; not every binary uses every helper.
#![allow(dead_code)]

pub mod bench;
pub mod client;
pub mod formats;
pub mod helpers;
pub mod netns;
pub mod process;
pub mod s3;
