//! clickedge: a click-tracking redirect edge.
//!
//! The modules follow a click: `edge` answers it, `links` knows where it
//! goes, `clicks` describes it, `clicklog` makes it durable, `stats` counts
//! it, `ship` forwards it to Kafka and `sink` loads it into ClickHouse (full
//! mode), `postback` matches conversions to clicks, and `admin` lets
//! operators manage links and read the counts.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod background;
pub mod body;
pub mod clicklog;
pub mod clicks;
pub mod config;
pub mod edge;
pub mod fsutil;
pub mod keys;
pub mod links;
pub mod postback;
pub mod server;
pub mod ship;
pub mod sink;
pub mod stats;
pub mod store;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod tokens;
pub mod warehouse;
