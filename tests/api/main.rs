//! Integration tests: one binary, every test with its own database on a real PostgreSQL.

mod api_contract;
mod datasets_config;
mod exactness;
mod fencing;
mod helpers;
mod lifecycle;
mod options;
mod plans;
mod process;
mod proxy;
mod queue;
mod resume;
mod stalls;
mod storage;
mod throttle;
