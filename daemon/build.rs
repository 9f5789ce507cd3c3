//! Lays out tokd's code so that what it runs from its start to idle sits
//! together: `tokd.order` lists those functions (written by `bench/order`
//! from a run of the benchmark's world under callgrind), and the linker
//! places them first. An idle tokd then keeps about 4 MiB less of its
//! program resident (BENCHMARKS.md, "What each change bought").
//!
//! Only for release builds on x86_64 Linux whose linker takes the option:
//! LLVM's lld, which Rust uses by default there since 1.90. GNU ld, gold
//! and mold do not, and a user may have chosen any of them (a linker in a
//! cargo config, `-Clinker-features=-lld`, `mold -run`), so a throw-away
//! program is first linked the same way with the option; if that fails,
//! tokd is linked as without the file. The names carry hashes of the
//! compiler's version and of the locked dependencies: after either
//! changes, names no longer found are skipped silently and the layout is
//! as without the file, until `bench/order` writes it anew (`bench/run`
//! says how much of it the build found). `TOKD_NO_ORDER=1` turns it off.
#![allow(clippy::print_stdout)] // cargo reads a build script's stdout

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn main() {
    println!("cargo::rerun-if-changed=tokd.order");
    println!("cargo::rerun-if-env-changed=TOKD_NO_ORDER");
    let env = |name: &str| std::env::var(name).unwrap_or_default();
    if env("PROFILE") != "release"
        || env("TARGET") != "x86_64-unknown-linux-gnu"
        || std::env::var_os("TOKD_NO_ORDER").is_some()
    {
        return;
    }
    let order = Path::new(&env("CARGO_MANIFEST_DIR")).join("tokd.order");
    if !order.is_file() {
        return;
    }
    // One argument each, through -Xlinker: a path may hold a comma, which
    // `-Wl,` would split.
    let args = [
        "-Xlinker".to_owned(),
        format!("--symbol-ordering-file={}", order.display()),
        "-Xlinker".to_owned(),
        "--no-warn-symbol-ordering".to_owned(),
    ];
    if links_with(&args) {
        for arg in &args {
            println!("cargo::rustc-link-arg-bin=tokd={arg}");
        }
    } else {
        println!(
            "cargo::warning=tokd is linked without its code layout (daemon/tokd.order): \
             this linker does not take --symbol-ordering-file (an idle tokd keeps about 4 MiB more resident)"
        );
    }
}

/// Whether an empty program links with `args` added, by the compiler,
/// flags and linker this build uses.
fn links_with(args: &[String]) -> bool {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    let source = out.join("probe.rs");
    if std::fs::write(&source, "fn main() {}\n").is_err() {
        return false;
    }
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let mut probe = Command::new(rustc);
    probe
        .arg("--crate-name=tokd_link_probe")
        .arg("--edition=2021")
        .arg("--target")
        .arg(std::env::var_os("TARGET").unwrap_or_default())
        .arg("-o")
        .arg(out.join("tokd-link-probe"))
        .arg(&source);
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    probe.args(flags.split('\x1f').filter(|flag| !flag.is_empty()));
    // A linker named in a cargo config reaches rustc as -C linker.
    if let Some(linker) = std::env::var_os("RUSTC_LINKER") {
        let mut flag = std::ffi::OsString::from("linker=");
        flag.push(linker);
        probe.arg("-C").arg(flag);
    }
    for arg in args {
        probe.arg("-C").arg(format!("link-arg={arg}"));
    }
    probe
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}
