//! tokd: a per-user OAuth 2.0 token broker.
//!
//! The daemon is a library with a thin `main.rs`, so that tests drive it
//! in-process. See ARCHITECTURE.md for the map.

pub mod config;
pub mod oauth;
pub mod paths;
pub mod secret;
pub mod store;
