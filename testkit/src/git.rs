//! A git server over HTTP, as Bitbucket runs one beside its OAuth
//! endpoints: `GET /git/REPO/...` serves a bare repository with git's
//! "dumb" HTTP protocol (static files; run `git update-server-info` in it)
//! and wants HTTP Basic with the configured user name and an access
//! token the emulator issued and still honours. Anything else gets `401`
//! with `WWW-Authenticate: Basic`, which is what makes git ask its
//! credential helpers, and what makes it `erase` a refused token.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use std::path::{Component, Path, PathBuf};

/// The served repositories and what was asked of them.
#[derive(Debug)]
pub(crate) struct GitServer {
    pub root: PathBuf,
    pub username: String,
    pub requests: Vec<GitRequest>,
}

/// One request to the git server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitRequest {
    pub path: String,
    /// The Basic user name, when credentials came.
    pub username: Option<String>,
    /// The Basic password, when credentials came.
    pub password: Option<String>,
    /// Whether the credentials were accepted.
    pub accepted: bool,
}

/// `(user, password)` from an `Authorization: Basic` value.
pub(crate) fn basic_credentials(authorization: Option<&str>) -> Option<(String, String)> {
    let encoded = authorization?.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// The file `path` (below `/git/`) names in `root`, if it stays inside.
pub(crate) fn file_in(root: &Path, path: &str) -> Option<PathBuf> {
    let relative = Path::new(path);
    relative
        .components()
        .all(|part| matches!(part, Component::Normal(_)))
        .then(|| root.join(relative))
}
