//! The one integration test binary of the daemon crate.

mod callers;
mod check_config;
mod clients;
mod clock;
mod completion;
mod cures;
mod e2e;
mod exec;
mod failures;
mod first_hour;
mod git;
mod hardening;
mod keyring;
mod logins;
mod notify;
mod oauth;
mod private;
mod promises;
mod security;
mod server;
mod store;
mod structure;
mod support;
mod systemd;
