//! tokd: a per-user OAuth 2.0 token broker.
//!
//! The daemon is a library with one entry, [`run`], and a thin `main.rs`,
//! so that tests drive it in-process. See ARCHITECTURE.md for the map.

mod accept;
pub mod broker;
pub mod bus;
pub mod callers;
pub mod config;
pub mod login;
pub mod oauth;
pub mod os;
pub mod paths;
pub mod schedule;
pub mod secret;
pub mod server;
pub mod storage;
mod sync;
pub mod tasks;
pub mod text;

pub use server::{Control, RunError, Setup, run};
