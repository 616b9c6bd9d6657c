//! The edge hub: devices push telemetry over MQTT, the hub stores every reading durably, apps read
//! it over an authenticated HTTPS API.
//!
//! Data flows one way: `ingest -> store -> (api, sync)`. `app` builds the parts and wires them together.

pub mod api;
pub mod app;
pub mod auth;
pub mod backup;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod exposition;
pub mod files;
pub mod histogram;
pub mod homeassistant;
pub mod http_client;
pub mod ingest;
pub mod live;
pub mod liveness;
pub mod memory;
pub mod metrics;
pub mod mqtt_client;
pub mod notify;
pub mod patterns;
pub mod ratelimit;
pub mod rules;
pub mod store;
pub mod sync;
pub mod values;

// The hub's allocator under test, so the stores' and the router's packings run as in the binary.
#[cfg(test)]
#[global_allocator]
static ALLOCATOR: memory::Allocator = memory::Allocator;
