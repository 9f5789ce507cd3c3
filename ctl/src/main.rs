//! tokctl: the command-line client of tokd.
//!
//! It depends only on `tokd-shared` (the bus names, wire types and errors),
//! never on daemon code. The commands of SPEC.md (`get`, `list`, `status`,
//! `login`, `refresh`, `revoke`, `reload`) arrive together with the
//! daemon's D-Bus service; until then this binary says so and exits with
//! the usage status instead of pretending to work.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "tokctl: this build has no D-Bus service to talk to yet (bus name {}); nothing was done",
        tokd_shared::BUS_NAME
    );
    ExitCode::from(2)
}
