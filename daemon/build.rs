//! Lays out tokd's code so that what it runs from its start to idle sits
//! together: `tokd.order` lists those functions (written by `bench/order`
//! from a run of the benchmark's world under callgrind), and the linker
//! places them first. An idle tokd then keeps a third as many pages of
//! its program resident (BENCHMARKS.md, "What each change bought").
//!
//! Only for release builds linked by LLVM's lld, the linker Rust uses by
//! default on x86_64 Linux since 1.90 (GNU ld has no such option). The
//! names carry hashes of the compiler's version and of the locked
//! dependencies: after either changes, names that are no longer found are
//! skipped silently and the layout is as without the file, until
//! `bench/order` writes it anew (`bench/run` says how much of it is found).
#![allow(clippy::print_stdout)] // cargo reads a build script's stdout

fn main() {
    println!("cargo::rerun-if-changed=tokd.order");
    println!("cargo::rerun-if-env-changed=TOKD_NO_ORDER");
    let env = |name: &str| std::env::var(name).unwrap_or_default();
    let flags = env("CARGO_ENCODED_RUSTFLAGS");
    let linker_chosen = ["linker", "fuse-ld"]
        .iter()
        .any(|word| flags.contains(word))
        || std::env::var_os("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_some();
    if env("PROFILE") != "release"
        || env("TARGET") != "x86_64-unknown-linux-gnu"
        || linker_chosen
        || std::env::var_os("TOKD_NO_ORDER").is_some()
        || !lld_by_default()
    {
        return;
    }
    let order = std::path::Path::new(&env("CARGO_MANIFEST_DIR")).join("tokd.order");
    if order.is_file() {
        println!(
            "cargo::rustc-link-arg-bin=tokd=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo::rustc-link-arg-bin=tokd=-Wl,--no-warn-symbol-ordering");
    }
}

/// Whether the compiler links with its own lld by default (1.90 and
/// later on this target).
fn lld_by_default() -> bool {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(out) = std::process::Command::new(rustc).arg("-V").output() else {
        return false;
    };
    let version = String::from_utf8_lossy(&out.stdout);
    let minor = version
        .split_whitespace()
        .nth(1)
        .and_then(|number| number.split('.').nth(1))
        .and_then(|minor| minor.parse::<u32>().ok());
    minor.is_some_and(|minor| minor >= 90)
}
