//! What tokd asks of the operating system about files it must keep
//! private: this process's uid, and folders only this user can enter.
//! Used by the store (the state folder) and the private socket (its
//! runtime folder). Never reads or writes a token.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// This process's uid, without `unsafe`: the owner of `/proc/self`.
pub fn current_uid() -> io::Result<u32> {
    fs::metadata("/proc/self").map(|metadata| metadata.uid())
}

/// Why a private folder cannot be used. `what` names the folder in the
/// message ("state folder", "runtime folder").
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    #[error("cannot create {what} {}: {source}", .path.display())]
    Create {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{what} {} belongs to uid {owner}, not to this user (uid {me}); refusing to use it", .path.display())]
    Foreign {
        what: &'static str,
        path: PathBuf,
        owner: u32,
        me: u32,
    },
    #[error("{what} {} is not a folder", .path.display())]
    NotAFolder { what: &'static str, path: PathBuf },
    #[error("{what} {} is a symlink, which tokd does not follow", .path.display())]
    Symlink { what: &'static str, path: PathBuf },
    #[error("{what} {} has mode {mode:o}: others may enter it; it must be 700", .path.display())]
    Open {
        what: &'static str,
        path: PathBuf,
        mode: u32,
    },
}

/// Creates `dir` (mode 0700) if needed and checks that it is a folder of
/// this user's with no access for anyone else: a looser mode is tightened
/// with a warning, a folder owned by someone else or a symlink (which could
/// lead anywhere, and whose target a chmod would change) is refused.
pub fn private_folder(dir: &Path, what: &'static str) -> Result<(), FolderError> {
    let create_error = |source| FolderError::Create {
        what,
        path: dir.to_owned(),
        source,
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(create_error)?;
    let metadata = fs::symlink_metadata(dir).map_err(create_error)?;
    if metadata.file_type().is_symlink() {
        return Err(FolderError::Symlink {
            what,
            path: dir.to_owned(),
        });
    }
    if !metadata.is_dir() {
        return Err(FolderError::NotAFolder {
            what,
            path: dir.to_owned(),
        });
    }
    let me = current_uid().map_err(create_error)?;
    if metadata.uid() != me {
        return Err(FolderError::Foreign {
            what,
            path: dir.to_owned(),
            owner: metadata.uid(),
            me,
        });
    }
    let mode = metadata.permissions().mode() & 0o777;
    if mode != 0o700 {
        tracing::warn!(
            path = %dir.display(),
            mode = format_args!("{mode:o}"),
            "{what} had loose permissions; set them to 700"
        );
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(create_error)?;
    }
    Ok(())
}

/// Checks, without changing anything, that `dir` is this user's alone:
/// a real folder (not a symlink), owned by this user, with no access for
/// group or others. For `$XDG_RUNTIME_DIR`: a runtime folder that others
/// can write to is no place for a socket that hands out tokens, since
/// another user could put their own there first.
pub fn check_private_folder(dir: &Path, what: &'static str) -> Result<(), FolderError> {
    let metadata = fs::symlink_metadata(dir).map_err(|source| FolderError::Create {
        what,
        path: dir.to_owned(),
        source,
    })?;
    let path = || dir.to_owned();
    if metadata.file_type().is_symlink() {
        return Err(FolderError::Symlink { what, path: path() });
    }
    if !metadata.is_dir() {
        return Err(FolderError::NotAFolder { what, path: path() });
    }
    let me = current_uid().map_err(|source| FolderError::Create {
        what,
        path: path(),
        source,
    })?;
    if metadata.uid() != me {
        return Err(FolderError::Foreign {
            what,
            path: path(),
            owner: metadata.uid(),
            me,
        });
    }
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(FolderError::Open {
            what,
            path: path(),
            mode,
        });
    }
    Ok(())
}
