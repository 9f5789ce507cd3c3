//! Where a consumer's client secret comes from: a command (run without a
//! shell, in a process group of its own, bounded in time and output, its
//! stderr kept out of the log), a file, the config itself, or nowhere (a
//! public client). It describes config, so it lives here; the redacting
//! type it yields is `secret::ClientSecret`. A failing command's stdout
//! never reaches a message.

use crate::secret::ClientSecret;
use crate::text::sanitize;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use zeroize::{Zeroize, Zeroizing};

/// How long a `client_secret_command` may run before it is killed.
pub const SECRET_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// The most a `client_secret_command` may print on stdout: a client secret
/// is a line, and a runaway command must not fill tokd's memory.
pub const MAX_SECRET_OUTPUT: usize = 64 * 1024;
/// How much of a failing command's stderr is kept (its first line of it
/// is shown).
const MAX_STDERR: usize = 4096;
/// After the command exits, how long to wait for output still on its way
/// (a leftover child may hold stdout open; it is not waited for).
const DRAIN: Duration = Duration::from_millis(50);

/// Where a consumer's client secret comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum ClientSecretSource {
    /// The consumer has no secret (a public client).
    None,
    /// Run this argv, without a shell; its stdout is the secret.
    Command(Vec<String>),
    /// Read this file; its content is the secret.
    File(PathBuf),
    /// Written in the config file itself.
    Inline(ClientSecret),
}

impl fmt::Debug for ClientSecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            // The argv is not secret (it is in the config), the output is.
            Self::Command(argv) => f.debug_tuple("Command").field(argv).finish(),
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            Self::Inline(secret) => f.debug_tuple("Inline").field(secret).finish(),
        }
    }
}

/// Why a client secret could not be had. Never carries the secret or the
/// command's output.
#[derive(Debug, thiserror::Error)]
pub enum ClientSecretError {
    #[error("client secret command `{program}` could not be started: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("client secret command `{program}` did not finish within {}s and was killed with its process group", .timeout.as_secs())]
    Timeout { program: String, timeout: Duration },
    #[error("client secret command `{program}` failed ({status}){}", stderr_suffix(.stderr))]
    Failed {
        program: String,
        status: String,
        /// The first line it printed on stderr, bounded and sanitized.
        stderr: Option<String>,
    },
    #[error("client secret command `{program}` printed more than {} KiB on stdout and was killed; it should print the secret on one line", MAX_SECRET_OUTPUT / 1024)]
    TooMuchOutput { program: String },
    #[error("client secret command `{program}` printed nothing on stdout")]
    EmptyCommand { program: String },
    #[error("client secret command `{program}` printed something that is not UTF-8")]
    NotUtf8Command { program: String },
    #[error("cannot read client secret file {}: {source}", .path.display())]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("client secret file {} is empty", .path.display())]
    EmptyFile { path: PathBuf },
    #[error("client secret file {} is not UTF-8", .path.display())]
    NotUtf8File { path: PathBuf },
}

impl ClientSecretSource {
    /// Produces the secret: runs the command or reads the file now. Called
    /// only when a request needs the secret; nothing is cached, so a secret
    /// changed at its source is used from the next request on.
    pub async fn resolve(&self) -> Result<Option<ClientSecret>, ClientSecretError> {
        self.resolve_with_timeout(SECRET_COMMAND_TIMEOUT).await
    }

    /// `resolve` with a chosen command timeout (tests use a short one).
    pub async fn resolve_with_timeout(
        &self,
        timeout: Duration,
    ) -> Result<Option<ClientSecret>, ClientSecretError> {
        match self {
            Self::None => Ok(None),
            Self::Inline(secret) => Ok(Some(secret.clone())),
            Self::File(path) => read_secret_file(path).await.map(Some),
            Self::Command(argv) => run_secret_command(argv, timeout).await.map(Some),
        }
    }
}

/// Strips the one trailing line ending that `echo` and editors add.
fn trim_line_ending(text: &str) -> &str {
    let text = text.strip_suffix('\n').unwrap_or(text);
    text.strip_suffix('\r').unwrap_or(text)
}

async fn read_secret_file(path: &Path) -> Result<ClientSecret, ClientSecretError> {
    let read_error = |source| ClientSecretError::ReadFile {
        path: path.to_owned(),
        source,
    };
    let metadata = tokio::fs::metadata(path).await.map_err(read_error)?;
    warn_if_readable_by_others(path, metadata.permissions().mode(), "client secret file");
    let bytes = tokio::fs::read(path).await.map_err(read_error)?;
    let text = String::from_utf8(bytes).map_err(|_| ClientSecretError::NotUtf8File {
        path: path.to_owned(),
    })?;
    let secret = trim_line_ending(&text);
    if secret.is_empty() {
        return Err(ClientSecretError::EmptyFile {
            path: path.to_owned(),
        });
    }
    Ok(ClientSecret::new(secret))
}

fn stderr_suffix(stderr: &Option<String>) -> String {
    match stderr {
        Some(line) => format!(": {line}"),
        None => "; run it by hand to see why".to_owned(),
    }
}

/// Runs the command in a process group of its own, without a shell.
///
/// Its stdout is read up to [`MAX_SECRET_OUTPUT`]; the result is taken
/// when the command exits (output still in the pipe is read, but a leftover
/// child holding stdout open is not waited for). On a timeout, or too much
/// output, the whole group is killed. Its stderr never reaches tokd's log
/// whole: only its first line, bounded, sanitized and scrubbed of what the
/// command printed on stdout, and only in the error of a failure.
async fn run_secret_command(
    argv: &[String],
    timeout: Duration,
) -> Result<ClientSecret, ClientSecretError> {
    // The config parser refuses an empty argv, so the program is always there.
    let program = argv.first().cloned().unwrap_or_default();
    let mut child = tokio::process::Command::new(&program)
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ClientSecretError::Spawn {
            program: program.clone(),
            source,
        })?;
    let group = child.id();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let mut output = Zeroizing::new(Vec::new());
    let mut errors = Vec::new();
    let run = async {
        let mut chunk = Zeroizing::new([0u8; 4096]);
        let mut stderr_chunk = [0u8; 512];
        let status = loop {
            tokio::select! {
                status = child.wait() => break status,
                read = read_some(&mut stdout, &mut chunk[..]) => match read {
                    Some(n) => {
                        output.extend_from_slice(&chunk[..n]);
                        if output.len() > MAX_SECRET_OUTPUT {
                            return Err(ClientSecretError::TooMuchOutput { program: program.clone() });
                        }
                    }
                    None => stdout = None,
                },
                read = read_some(&mut stderr, &mut stderr_chunk), if errors.len() < MAX_STDERR => match read {
                    Some(n) => errors.extend_from_slice(&stderr_chunk[..n]),
                    None => stderr = None,
                },
            }
        };
        // What it wrote before it exited is in the pipe already.
        while stdout.is_some()
            && let Ok(Some(n)) =
                tokio::time::timeout(DRAIN, read_some(&mut stdout, &mut chunk[..])).await
        {
            output.extend_from_slice(&chunk[..n]);
            if output.len() > MAX_SECRET_OUTPUT {
                return Err(ClientSecretError::TooMuchOutput {
                    program: program.clone(),
                });
            }
        }
        while stderr.is_some()
            && errors.len() < MAX_STDERR
            && let Ok(Some(n)) =
                tokio::time::timeout(DRAIN, read_some(&mut stderr, &mut stderr_chunk)).await
        {
            errors.extend_from_slice(&stderr_chunk[..n]);
        }
        status.map_err(|source| ClientSecretError::Spawn {
            program: program.clone(),
            source,
        })
    };
    let outcome = match tokio::time::timeout(timeout, run).await {
        Ok(outcome) => outcome,
        Err(_) => Err(ClientSecretError::Timeout {
            program: program.clone(),
            timeout,
        }),
    };
    let status = match outcome {
        Ok(status) => status,
        Err(error) => {
            kill_group(group);
            return Err(error);
        }
    };
    let text = std::str::from_utf8(&output).map_err(|_| ClientSecretError::NotUtf8Command {
        program: program.clone(),
    })?;
    let secret = trim_line_ending(text);
    if !status.success() {
        let line = String::from_utf8_lossy(&errors)
            .lines()
            .map(str::trim)
            .find(|line| !line.is_empty())
            .map(|line| {
                let line = sanitize(line, 200);
                if secret.len() >= 4 {
                    line.replace(secret, "[redacted]")
                } else {
                    line
                }
            });
        errors.zeroize();
        return Err(ClientSecretError::Failed {
            program,
            status: status.to_string(),
            stderr: line,
        });
    }
    errors.zeroize();
    if secret.is_empty() {
        return Err(ClientSecretError::EmptyCommand { program });
    }
    Ok(ClientSecret::new(secret))
}

/// One read from an optional pipe: `None` once it is closed (or absent, in
/// which case it never resolves, leaving the other branches to run).
async fn read_some<R: tokio::io::AsyncRead + Unpin>(
    pipe: &mut Option<R>,
    buffer: &mut [u8],
) -> Option<usize> {
    match pipe {
        Some(pipe) => match pipe.read(buffer).await {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(n),
        },
        None => std::future::pending().await,
    }
}

/// Kills every process of the command's group (the command and anything
/// it started that stayed in its group).
fn kill_group(group: Option<u32>) {
    let Some(pid) = group
        .and_then(|id| i32::try_from(id).ok())
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
}

/// Logs a warning when `mode` lets the group or others read the file.
/// Returns whether it warned.
pub fn warn_if_readable_by_others(path: &Path, mode: u32, what: &str) -> bool {
    if mode & 0o044 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{:o}", mode & 0o777),
            "{what} is readable by other users; run `chmod 600 {}`",
            path.display()
        );
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAW: &str = "s3cr3t-value-42";

    #[test]
    fn an_inline_source_is_redacted() {
        let shown = format!("{:?}", ClientSecretSource::Inline(ClientSecret::new(RAW)));
        assert!(
            !shown.contains(RAW) && shown.contains("redacted"),
            "{shown}"
        );
    }

    #[test]
    fn line_endings_are_trimmed_once() {
        assert_eq!(trim_line_ending("abc\n"), "abc");
        assert_eq!(trim_line_ending("abc\r\n"), "abc");
        assert_eq!(trim_line_ending("abc\n\n"), "abc\n");
        assert_eq!(trim_line_ending(" abc "), " abc ");
    }

    fn argv(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn command_stdout_is_the_secret() {
        let source = ClientSecretSource::Command(argv(&["printf", "%s\\n", RAW]));
        let secret = source.resolve().await.expect("resolve").expect("some");
        assert_eq!(secret.expose(), RAW);
    }

    #[tokio::test]
    async fn command_runs_without_a_shell() {
        // With a shell, `$HOME` would expand; without one it is a literal.
        let source = ClientSecretSource::Command(argv(&["printf", "%s", "$HOME"]));
        let secret = source.resolve().await.expect("resolve").expect("some");
        assert_eq!(secret.expose(), "$HOME");
    }

    #[tokio::test]
    async fn failing_command_names_the_program_but_not_its_output() {
        let source =
            ClientSecretSource::Command(argv(&["sh", "-c", &format!("echo {RAW}; exit 3")]));
        let error = source.resolve().await.expect_err("must fail");
        let text = error.to_string();
        assert!(matches!(error, ClientSecretError::Failed { .. }), "{text}");
        assert!(text.contains("`sh`") && text.contains('3'), "{text}");
        assert!(!text.contains(RAW), "{text}");
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let source = ClientSecretSource::Command(argv(&["/nonexistent/tokd-secret-helper"]));
        let error = source.resolve().await.expect_err("must fail");
        assert!(matches!(error, ClientSecretError::Spawn { .. }), "{error}");
    }

    #[tokio::test]
    async fn empty_output_is_refused() {
        let source = ClientSecretSource::Command(argv(&["true"]));
        let error = source.resolve().await.expect_err("must fail");
        assert!(
            matches!(error, ClientSecretError::EmptyCommand { .. }),
            "{error}"
        );
    }

    #[tokio::test]
    async fn slow_command_is_killed_at_the_timeout() {
        let source = ClientSecretSource::Command(argv(&["sleep", "30"]));
        let started = std::time::Instant::now();
        let error = source
            .resolve_with_timeout(Duration::from_millis(200))
            .await
            .expect_err("must time out");
        assert!(
            matches!(error, ClientSecretError::Timeout { .. }),
            "{error}"
        );
        // Not a speed check: it proves we did not wait for `sleep 30`.
        assert!(started.elapsed() < Duration::from_secs(25));
    }

    #[tokio::test]
    async fn a_flood_on_stdout_is_cut_off_at_the_cap() {
        let source = ClientSecretSource::Command(argv(&["yes", "x"]));
        let error = source.resolve().await.expect_err("too much");
        assert!(
            matches!(error, ClientSecretError::TooMuchOutput { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("more than 64 KiB"), "{error}");
    }

    #[tokio::test]
    async fn the_result_is_taken_when_the_command_exits() {
        // A background child keeps stdout open long after the command
        // itself has printed the secret and exited.
        let source = ClientSecretSource::Command(argv(&[
            "sh",
            "-c",
            &format!("printf '%s\\n' {RAW}; sleep 30 &"),
        ]));
        let secret = source
            .resolve_with_timeout(Duration::from_secs(10))
            .await
            .expect("not waiting for the background child")
            .expect("some");
        assert_eq!(secret.expose(), RAW);
    }

    #[tokio::test]
    async fn at_the_timeout_the_whole_process_group_is_killed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_file = dir.path().join("child");
        let script = format!("sleep 1000 & echo $! > {}; wait", pid_file.display());
        let source = ClientSecretSource::Command(argv(&["sh", "-c", &script]));
        let error = source
            .resolve_with_timeout(Duration::from_millis(500))
            .await
            .expect_err("timed out");
        assert!(
            matches!(error, ClientSecretError::Timeout { .. }),
            "{error}"
        );
        let pid = std::fs::read_to_string(&pid_file).expect("the child's pid");
        let stat = format!("/proc/{}/stat", pid.trim());
        let dead = async {
            // Gone, or a zombie waiting for its new parent to reap it.
            while std::fs::read_to_string(&stat)
                .is_ok_and(|text| text.split_whitespace().nth(2).is_none_or(|s| s != "Z"))
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), dead)
            .await
            .expect("the background child was killed with its group");
    }

    #[tokio::test]
    async fn a_failure_says_the_first_line_of_stderr_scrubbed() {
        let source = ClientSecretSource::Command(argv(&[
            "sh",
            "-c",
            &format!("echo {RAW}; echo 'gpg: no key for {RAW}' >&2; echo second >&2; exit 2"),
        ]));
        let error = source.resolve().await.expect_err("fails");
        let text = error.to_string();
        assert!(text.contains("gpg: no key for [redacted]"), "{text}");
        assert!(!text.contains("second") && !text.contains(RAW), "{text}");
    }

    #[tokio::test]
    async fn file_content_is_the_secret() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        std::fs::write(&path, format!("{RAW}\n")).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let secret = ClientSecretSource::File(path)
            .resolve()
            .await
            .expect("resolve")
            .expect("some");
        assert_eq!(secret.expose(), RAW);
    }

    #[tokio::test]
    async fn missing_and_empty_files_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = ClientSecretSource::File(dir.path().join("nope"));
        assert!(matches!(
            missing.resolve().await,
            Err(ClientSecretError::ReadFile { .. })
        ));
        let empty_path = dir.path().join("empty");
        std::fs::write(&empty_path, "\n").expect("write");
        assert!(matches!(
            ClientSecretSource::File(empty_path).resolve().await,
            Err(ClientSecretError::EmptyFile { .. })
        ));
    }

    #[test]
    fn loose_modes_warn() {
        let path = Path::new("/x");
        assert!(warn_if_readable_by_others(path, 0o644, "file"));
        assert!(warn_if_readable_by_others(path, 0o640, "file"));
        assert!(!warn_if_readable_by_others(path, 0o600, "file"));
        assert!(!warn_if_readable_by_others(path, 0o700, "file"));
    }

    #[tokio::test]
    async fn inline_and_none() {
        let inline = ClientSecretSource::Inline(ClientSecret::new(RAW));
        assert_eq!(
            inline.resolve().await.expect("ok").expect("some").expose(),
            RAW
        );
        assert!(
            ClientSecretSource::None
                .resolve()
                .await
                .expect("ok")
                .is_none()
        );
    }
}
