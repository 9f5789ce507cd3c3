//! The one integration test binary of the daemon crate.

mod check_config;
mod e2e;
mod oauth;
mod security;
mod store;
mod support;
mod systemd;
