//! Why a call to the broker failed: one kind per thing a caller can do
//! about it, each with one sentence that says what happened and what to
//! do. The bus adapter maps each kind to a named D-Bus error.
//!
//! Never holds a secret: provider texts are sanitized and scrubbed by the
//! OAuth client before they reach a sentence.

use crate::oauth::ErrorKind;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No installation has that name.
    #[error("{0}")]
    UnknownInstallation(String),
    /// A human must log in.
    #[error("{0}")]
    NeedsLogin(String),
    /// The config is wrong, or the provider refused the client.
    #[error("{0}")]
    Misconfigured(String),
    /// The provider is failing and no valid token is held.
    #[error("{0}")]
    ProviderUnavailable(String),
    /// The call's arguments were refused.
    #[error("{0}")]
    InvalidArgument(String),
    /// tokd is stopping and starts no new work.
    #[error("{0}")]
    Stopping(String),
    /// The keyring is locked or gone and no valid token is held.
    #[error("{0}")]
    Locked(String),
}

impl Error {
    /// The error for a provider failure of `kind`, told in `message`: the
    /// one place where the OAuth client's classification meets the
    /// broker's errors.
    pub fn of_kind(kind: ErrorKind, message: String) -> Self {
        match kind {
            ErrorKind::NeedsLogin => Self::NeedsLogin(message),
            ErrorKind::Misconfigured => Self::Misconfigured(message),
            ErrorKind::Transient => Self::ProviderUnavailable(message),
        }
    }

    pub(crate) fn stopping() -> Self {
        Self::Stopping(
            "tokd is stopping and starts no new requests; run the command again in a moment"
                .to_owned(),
        )
    }
}
