//! The simulated SuperOffice: its state API, JWKS and signed notifications,
//! the signer standing in for SuperOffice's certificate, throwaway TLS
//! certificates, the demo, and a control API for tests in other processes. It ships in the binary (the demo needs it),
//! but nothing in the product's modules imports it.

pub mod control;
pub mod demo;
pub mod demo_replicas;
pub mod devcerts;
pub mod fake_superoffice;
pub mod signer;
