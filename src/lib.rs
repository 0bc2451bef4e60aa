//! upsell-appliance: post-purchase upsell and follow-up for small online stores, in one
//! process. See README `## Architecture` for the code map and the invariants.

pub mod admin_client;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod engine;
pub mod http;
pub mod import;
pub mod ingest;
pub mod logging;
pub mod metrics;
pub mod ops;
pub mod outbound;
pub mod pipeline;
pub mod privacy;
pub mod replay;
pub mod report;
pub mod storage;
