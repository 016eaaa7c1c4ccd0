//! Integration tests: the real server over real sockets, through the
//! generated client, against the project's fake SuperOffice.

mod budget;
mod client;
mod client_watch;
mod cluster;
mod configuration;
mod dashboard;
mod durability;
mod get;
mod helpers;
mod limits;
mod list;
mod metrics;
mod nats;
mod persistence;
mod poll;
mod readiness;
mod resume;
mod security;
mod serving;
mod watch;
mod webhook;
