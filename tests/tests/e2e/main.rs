//! End-to-end tests: the real `hub` binary, real mosquitto and mosquitto_pub, real TLS.

mod acks;
mod api;
mod authz;
mod backup;
mod boots;
mod broker_gate;

mod cli;
mod commands;
mod crash;
mod dashboard;
mod device_passwords;
mod device_removal;
mod disk_full;
mod downsample;

mod external_broker;
mod first_run;
mod hardening;
mod harness;
mod homeassistant;
mod ingest;
mod live;
mod mapped;
mod metrics;
mod modbus;
mod mqtt_door;
mod mqtt_door_external;
mod openapi;
mod overload;
mod recipes;
mod rules;
mod security;
mod serial;
mod sparkplug;
mod store_upgrade;
mod sync;
mod tokens;
mod upgrade;
