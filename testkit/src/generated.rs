//! Files kept in the repository but generated from code (man pages):
//! a test renders them and fails when the kept copy differs, or rewrites
//! the kept copies when `TOKD_REGENERATE=1` is set.

use std::path::Path;

/// The man pages of `cmd` and of each of its subcommands (as
/// `clap_mangen::generate_to` names them: `tokctl.1`, `tokctl-get.1`, …),
/// rendered in memory.
pub fn man_pages(cmd: clap::Command) -> Vec<(String, Vec<u8>)> {
    fn walk(cmd: clap::Command, out: &mut Vec<(String, Vec<u8>)>) {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
            walk(sub, out);
        }
        let man = clap_mangen::Man::new(cmd);
        let mut page = Vec::new();
        man.render(&mut page).expect("render a man page");
        out.push((man.get_filename(), page));
    }
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut out = Vec::new();
    walk(cmd, &mut out);
    out
}

/// The variable that makes [`check_generated`] rewrite instead of fail.
pub const REGENERATE: &str = "TOKD_REGENERATE";

/// Checks that `dir` holds exactly `files` (name, contents) among the
/// names `owned` says belong to this generator; with `TOKD_REGENERATE=1`,
/// writes them (and removes owned files no longer generated) instead.
pub fn check_generated(dir: &Path, files: &[(String, Vec<u8>)], owned: impl Fn(&str) -> bool) {
    let regenerate = std::env::var_os(REGENERATE).is_some_and(|v| v == "1");
    std::fs::create_dir_all(dir).expect("the folder of generated files");
    let kept: Vec<String> = std::fs::read_dir(dir)
        .expect("list the folder")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| owned(name))
        .collect();
    let mut stale = Vec::new();
    for (name, contents) in files {
        let path = dir.join(name);
        if std::fs::read(&path).ok().as_deref() != Some(contents.as_slice()) {
            if regenerate {
                std::fs::write(&path, contents).expect("write a generated file");
            } else {
                stale.push(name.clone());
            }
        }
    }
    for name in kept {
        if !files.iter().any(|(generated, _)| *generated == name) {
            if regenerate {
                std::fs::remove_file(dir.join(&name)).expect("remove a stale file");
            } else {
                stale.push(format!("{name} (no longer generated)"));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "out of date in {}: {}; regenerate with `{REGENERATE}=1 cargo test --workspace` and commit the result",
        dir.display(),
        stale.join(", ")
    );
}
