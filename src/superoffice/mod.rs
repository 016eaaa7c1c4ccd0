//! SuperOffice's state API: the client and its response parser, the
//! budget every request to SuperOffice takes a permit from, the
//! single-flight wrapper, the poller that keeps every tracked tenant fresh,
//! and the tracker that fetches a tenant on first use.

pub mod budget;
mod client;
pub mod poller;
mod single_flight;
pub(crate) mod tracker;
pub(crate) mod unknowns;

pub use client::*;
pub use single_flight::SingleFlight;
