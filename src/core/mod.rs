//! The core: tenants, their records, the store and watch streams. No I/O,
//! no protocol: nothing here imports tonic, prost, axum, hyper or reqwest.

pub mod backend;
pub mod encoded;
pub(crate) mod fanout;
pub mod ledger;
pub mod store;
pub mod tenant;
pub(crate) mod turns;
pub mod watch;
