//! The workspace's `rust-version` (the README's minimum Rust) is at least
//! what every locked dependency declares, so that the stated minimum is
//! true. Together with clippy's `incompatible_msrv` (which CI runs with
//! `-D warnings` against the same `rust-version`) this checks the minimum
//! without a second toolchain.

use std::process::Command;

fn version(text: &str) -> Vec<u64> {
    text.split('.')
        .map(|part| part.parse().unwrap_or(0))
        .collect()
}

#[test]
fn the_stated_minimum_rust_covers_every_dependency() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
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
