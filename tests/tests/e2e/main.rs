//! End-to-end tests: the real `hub` binary, real mosquitto and mosquitto_pub, real TLS.

mod api;
mod cli;
mod external_broker;
mod first_run;
mod harness;
mod ingest;
