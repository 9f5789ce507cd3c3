//! The workspace's `rust-version` (the README's minimum Rust) is at least
//! what every locked dependency built on this platform declares, so that the stated minimum is
//! true. Together with clippy's `incompatible_msrv` (which CI runs with
//! `-D warnings` against the same `rust-version`) this checks the minimum
//! without a second toolchain.

use std::process::Command;

fn version(text: &str) -> Vec<u64> {
    text.split('.')
        .map(|part| part.parse().unwrap_or(0))
        .collect()
}

/// The platform this test runs on, as rustc names it.
fn host() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let output = Command::new(rustc).arg("-vV").output().expect("rustc -vV");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .expect("rustc names its host")
        .to_owned()
}

#[test]
fn the_stated_minimum_rust_covers_every_dependency() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    // Only this platform's packages: they are the ones the build that
    // runs this test has downloaded. The whole lock file names packages
    // for Windows, Android and more, which a fresh cargo cache does not
    // hold (and `--offline` cannot fetch); tokd builds for Linux only.
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", &host()])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("cargo metadata");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("metadata JSON");
    let stated = env!("CARGO_PKG_RUST_VERSION");
    let mut newer = Vec::new();
    for package in metadata["packages"].as_array().expect("packages") {
        if let Some(needs) = package["rust_version"].as_str()
            && version(needs) > version(stated)
        {
            newer.push(format!(
                "{} {} needs {needs}",
                package["name"].as_str().unwrap_or("?"),
                package["version"].as_str().unwrap_or("?")
            ));
        }
    }
    assert!(
        newer.is_empty(),
        "the workspace states rust-version {stated}, but {}; raise it in Cargo.toml and the README",
        newer.join(", ")
    );
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README");
    assert!(
        readme.contains(&format!("Rust toolchain ({stated} or newer)")),
        "the README states another minimum than {stated}"
    );
}
