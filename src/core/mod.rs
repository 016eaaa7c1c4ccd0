//! The core: tenants, their records, the store and watch streams. No I/O,
//! no protocol: nothing here imports tonic, prost, axum, hyper or reqwest.

pub(crate) mod backend;
pub(crate) mod encoded;
pub(crate) mod fanout;
pub(crate) mod ledger;
pub(crate) mod store;
pub(crate) mod tenant;
pub(crate) mod turns;
pub(crate) mod watch;
