//! Integration tests: one binary, every test with its own database on a real PostgreSQL.
#![recursion_limit = "256"]

mod any_key;
mod api_contract;
mod cors;
mod datasets_config;
mod downloads;
mod enqueue;
mod exactness;
mod fencing;
mod formats;
mod keys;
mod lifecycle;
mod limits;
mod links;
mod object_storage;
mod operability;
mod options;
mod parallel;
mod plans;
mod process;
mod proxy;
mod queue;
mod quotas;
mod resume;
mod stalls;
mod storage;
#[path = "../support/mod.rs"]
mod support;
mod sweep;
mod tenancy;
mod throttle;
mod webhooks;

use support::helpers;
