//! The one way out of tokctl: every line it writes goes through here.
//! What tokd sends carries a provider's words (scopes, error descriptions,
//! addresses, sentences built around them), and none of its control,
//! bidirectional or invisible characters reaches the terminal
//! (`tokd_shared::text`): a scope cannot retitle the window, clear the
//! screen, print a link, or make a sentence read backwards. A token is
//! printable ASCII (tokd refuses any other), so it passes unchanged.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set while stdout belongs to a program reading tokctl's result (kubectl
/// reads an ExecCredential there): what [`out`] says then goes to stderr.
static STDOUT_KEPT: AtomicBool = AtomicBool::new(false);

/// While `kept`, what would go to stdout goes to stderr.
pub fn keep_stdout_for_the_result(kept: bool) {
    STDOUT_KEPT.store(kept, Ordering::Relaxed);
}

/// `text` on stdout as it is, less what must not reach a terminal (line
/// breaks kept). `false` when stdout is closed.
pub fn out(text: &str) -> bool {
    let clean = tokd_shared::text::for_terminal(text);
    let written = if STDOUT_KEPT.load(Ordering::Relaxed) {
        let mut stderr = std::io::stderr().lock();
        stderr
            .write_all(clean.as_bytes())
            .and_then(|()| stderr.flush())
    } else {
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(clean.as_bytes())
            .and_then(|()| stdout.flush())
    };
    written.is_ok()
}

/// A question on stderr, without a line break after it (the answer
/// follows on the same line).
pub fn raw_prompt(text: &str) {
    let clean = tokd_shared::text::for_terminal(text);
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(clean.as_bytes());
    let _ = stderr.flush();
}

/// `tokctl: TEXT` on stderr, on one line.
pub fn line(text: &str) {
    raw_line(&format!("tokctl: {text}"));
}

/// `tokctl: warning: TEXT` on stderr, on one line.
pub fn warning(text: &str) {
    line(&format!("warning: {text}"));
}

/// `text` (with its own prefix) on stderr, on one line.
pub fn raw_line(text: &str) {
    let clean = one_line(&tokd_shared::text::for_terminal(text));
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{clean}");
}

/// Whitespace runs, line breaks included, become one space.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    /// Nothing in tokctl writes around this module: no `print!`,
    /// `eprintln!`, or own handle on stdout or stderr elsewhere.
    #[test]
    fn every_line_goes_through_say() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        for entry in std::fs::read_dir(&src).expect("ctl/src") {
            let path = entry.expect("entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name == "say.rs" || !name.ends_with(".rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read");
            for (number, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for way in [
                    "print!(",
                    "println!(",
                    "eprint!(",
                    "eprintln!(",
                    "io::stdout(",
                    "io::stderr(",
                ] {
                    assert!(
                        !code.contains(way),
                        "{name}:{}: writes with `{way}` around say.rs: {line}",
                        number + 1
                    );
                }
            }
        }
    }
}
