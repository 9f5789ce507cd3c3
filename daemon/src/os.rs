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
}

/// Creates `dir` (mode 0700) if needed and checks that it is a folder of
/// this user's with no access for anyone else: a looser mode is tightened
/// with a warning, a folder owned by someone else is refused.
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
    let metadata = fs::metadata(dir).map_err(create_error)?;
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
