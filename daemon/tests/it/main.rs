//! The one integration test binary of the daemon crate.

mod oauth;
mod store;
mod support;
