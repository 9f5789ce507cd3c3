//! tokd: a per-user OAuth 2.0 token broker.
//!
//! The daemon is a library with a thin `main.rs`, so that tests drive it
//! in-process. See ARCHITECTURE.md for the map.

pub mod bus;
pub mod config;
pub mod login;
pub mod oauth;
pub mod paths;
pub mod schedule;
pub mod secret;
pub mod service;
pub mod store;
