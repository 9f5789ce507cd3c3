//! The state folder: one JSON file per installation (its state file).
//!
//! [`StateFolder`] owns the state folder (`$XDG_STATE_HOME/tokd/`, mode 0700) and
//! the files in it (`NAME.json`, mode 0600). Every write is atomic: a
//! temporary file in the same folder, fsync, rename over the old file, fsync
//! of the folder. A reader therefore sees the old record or the new one,
//! never a torn file. A file that cannot be parsed is moved aside to
//! `NAME.json.corrupt-UNIXTIME` with a warning, never overwritten or deleted,
//! and affects only its own installation.
//!
//! The functions here are blocking (small files, fsync); async callers run
//! them on the blocking pool. This module never speaks HTTP and never decides
//! when to refresh.

use super::Store;
use crate::os::{FolderError, current_uid, private_folder};
use crate::secret::{AccessToken, RefreshToken};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use zeroize::Zeroizing;

/// The version written in every record. A file with a higher version was
/// written by a newer tokd and is left untouched.
pub const FORMAT_VERSION: u32 = 1;

/// Temporary files older than this are leftovers of a crash and are removed
/// when the store is opened.
const STALE_TEMPORARY: Duration = Duration::from_secs(60);

/// What is kept for one installation across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub version: u32,
    #[serde(default)]
    pub access_token: Option<AccessToken>,
    #[serde(default)]
    pub refresh_token: Option<RefreshToken>,
    /// Wall-clock expiry of the access token; `None` when the provider gave
    /// no lifetime and the token does not expire.
    #[serde(default, with = "unix_seconds")]
    pub expires_at: Option<SystemTime>,
    /// Scopes the provider granted (may differ from those asked for).
    #[serde(default)]
    pub scopes: Vec<String>,
    // No `token_type`: tokd accepts only bearer tokens (`oauth/response.rs`),
    // so it is not kept. Files that have one (written before) still read.
    #[serde(default, with = "unix_seconds")]
    pub last_refresh: Option<SystemTime>,
    /// The last failure, as a human sentence (never a secret).
    #[serde(default)]
    pub last_error: Option<String>,
    /// Whom the tokens were issued to: client id, token URL, grant and
    /// scopes as configured then. A record whose identity no longer
    /// matches the config is not used (older records have none).
    #[serde(default)]
    pub issued_for: Option<Arc<str>>,
    /// The store the tokens are in: here, or (`"keyring"`) in the
    /// keyring, in which case this file holds none. (Kept under its first
    /// name, `secrets`, in the file.)
    #[serde(default, rename = "secrets", skip_serializing_if = "Store::is_file")]
    pub store: Store,
}

impl Record {
    /// This record as its state file holds it when the tokens are in the
    /// keyring: everything but the tokens.
    pub fn without_tokens(&self) -> Self {
        Self {
            access_token: None,
            refresh_token: None,
            store: Store::Keyring,
            ..self.clone()
        }
    }
}

impl Default for Record {
    fn default() -> Self {
        Self {
            version: FORMAT_VERSION,
            access_token: None,
            refresh_token: None,
            expires_at: None,
            scopes: Vec::new(),
            last_refresh: None,
            last_error: None,
            issued_for: None,
            store: Store::File,
        }
    }
}

mod unix_seconds {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    pub fn serialize<S: Serializer>(time: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        time.map(|time| {
            time.duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_secs())
        })
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        let seconds = Option::<u64>::deserialize(d)?;
        Ok(seconds.map(|seconds| UNIX_EPOCH + Duration::from_secs(seconds)))
    }
}

/// What loading one installation found.
#[derive(Debug)]
pub enum Loaded {
    /// No file: the installation was never authorized (or was revoked).
    Missing,
    Found(Record),
    /// The file could not be read or parsed; it was moved to `moved_to`.
    MovedAside {
        moved_to: PathBuf,
        reason: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Folder(#[from] FolderError),
    #[error("cannot write {}: {source}", .path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read {}: {source}", .path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{} was written by a newer tokd (format {found}, this one reads {FORMAT_VERSION}); it was left untouched, upgrade tokd", .path.display())]
    NewerFormat { path: PathBuf, found: u32 },
    #[error("{} is readable by others (mode {mode:o}) and cannot be set to 600: {source}", .path.display())]
    Permissions {
        path: PathBuf,
        mode: u32,
        source: io::Error,
    },
    /// The blocking task that wrote or read was cut short (it panicked).
    #[error("the state file operation was interrupted: {0}")]
    Interrupted(String),
}

/// A handle on the state folder.
#[derive(Debug, Clone)]
pub struct StateFolder {
    dir: PathBuf,
    /// This user: the owner every state file must have.
    uid: u32,
}

/// Distinguishes temporary files written concurrently by one process.
static TEMPORARY_COUNTER: AtomicU64 = AtomicU64::new(0);

impl StateFolder {
    /// Opens (creating if needed) the state folder: mode 0700, owned by this
    /// user. A looser mode is tightened with a warning; a folder owned by
    /// someone else is refused.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StateError> {
        let dir = dir.into();
        private_folder(&dir, "state folder")?;
        let uid = current_uid().map_err(|source| StateError::Read {
            path: dir.clone(),
            source,
        })?;
        let store = Self { dir, uid };
        store.remove_stale_temporaries();
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file that holds `name`'s record.
    pub fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Reads `name`'s record. A file that cannot be parsed is moved aside
    /// (and reported in the result and the log); a file from a newer tokd is
    /// an error and left in place.
    pub fn load(&self, name: &str) -> Result<Loaded, StateError> {
        self.load_at(None, name)
    }

    /// [`StateFolder::load`] for each of `names`, in order. The folder is opened
    /// once and each file relative to it: tokd reads thousands of records
    /// at start, and the path walk was a fifth of that time.
    pub fn load_many<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Vec<Result<Loaded, StateError>> {
        let folder = rustix::fs::open(
            &self.dir,
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .ok();
        names
            .into_iter()
            .map(|name| self.load_at(folder.as_ref(), name))
            .collect()
    }

    fn load_at(
        &self,
        folder: Option<&std::os::fd::OwnedFd>,
        name: &str,
    ) -> Result<Loaded, StateError> {
        let path = self.path_of(name);
        // Never through a symlink (one planted in the folder would have
        // tokd read, and chmod, a file elsewhere), and never blocking on a
        // FIFO planted in its place.
        let flags = rustix::fs::OFlags::RDONLY
            | rustix::fs::OFlags::CLOEXEC
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::NONBLOCK;
        let opened = match folder {
            Some(folder) => rustix::fs::openat(
                folder,
                format!("{name}.json"),
                flags,
                rustix::fs::Mode::empty(),
            ),
            None => rustix::fs::open(&path, flags, rustix::fs::Mode::empty()),
        }
        .map(File::from)
        .map_err(io::Error::from);
        // One open: the owner, the size, the mode and the bytes all come
        // through the descriptor.
        let mut file = match opened {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Loaded::Missing),
            Err(error) if error.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
                return self.move_aside(
                    name,
                    &path,
                    "a symlink, which tokd does not follow".into(),
                );
            }
            Err(error) => return self.move_aside(name, &path, format!("unreadable: {error}")),
        };
        let metadata = file.metadata().map_err(|source| StateError::Read {
            path: path.clone(),
            source,
        })?;
        if !metadata.is_file() {
            return self.move_aside(name, &path, "not a regular file".into());
        }
        if metadata.uid() != self.uid {
            // Planted while the folder was loose, perhaps: its tokens are
            // not this user's to serve.
            return self.move_aside(
                name,
                &path,
                format!(
                    "owned by uid {}, not by this user (uid {})",
                    metadata.uid(),
                    self.uid
                ),
            );
        }
        tighten_file(&file, &path, &metadata)?;
        let size = usize::try_from(metadata.len()).unwrap_or(0);
        let bytes = match read_all(&mut file, size) {
            Ok(bytes) => Zeroizing::new(bytes),
            Err(error) => return self.move_aside(name, &path, format!("unreadable: {error}")),
        };
        drop(file);
        match serde_json::from_slice::<Record>(&bytes) {
            Ok(record) if record.version > FORMAT_VERSION => Err(StateError::NewerFormat {
                path,
                found: record.version,
            }),
            Ok(mut record) => {
                // Held for as long as tokd runs, once per installation.
                record.scopes.shrink_to_fit();
                Ok(Loaded::Found(record))
            }
            Err(error) => {
                // A newer format may not parse as this one: say so rather
                // than move the file aside.
                #[derive(Deserialize)]
                struct VersionOnly {
                    version: u32,
                }
                match serde_json::from_slice::<VersionOnly>(&bytes) {
                    Ok(VersionOnly { version }) if version > FORMAT_VERSION => {
                        Err(StateError::NewerFormat {
                            path,
                            found: version,
                        })
                    }
                    _ => self.move_aside(name, &path, parse_reason(&error)),
                }
            }
        }
    }

    /// Writes `name`'s record atomically and durably: when this returns Ok,
    /// the record survives a crash or power loss; when it returns Err, the
    /// previous record is still in place.
    pub fn save(&self, name: &str, record: &Record) -> Result<(), StateError> {
        self.write_encoded(name, &self.encode(name, record, None)?)
    }

    /// `record` as its state file holds it (the first half of
    /// [`StateFolder::save`]: `Storage` does it off the blocking pool, so
    /// that the pool's threads, which keep what they free, allocate little).
    /// `keyring_item`: the keyring item the tokens were written to, kept
    /// in the file (not in memory) so that tokd prefers it should the
    /// keyring hold others for this installation.
    pub fn encode(
        &self,
        name: &str,
        record: &Record,
        keyring_item: Option<&str>,
    ) -> Result<Zeroizing<Vec<u8>>, StateError> {
        #[derive(Serialize)]
        struct OnDisk<'a> {
            #[serde(flatten)]
            record: &'a Record,
            #[serde(skip_serializing_if = "Option::is_none")]
            keyring_item: Option<&'a str>,
        }
        let on_disk = OnDisk {
            record,
            keyring_item,
        };
        let mut bytes = Zeroizing::new(serde_json::to_vec_pretty(&on_disk).map_err(|error| {
            StateError::Write {
                path: self.path_of(name),
                source: io::Error::other(error),
            }
        })?);
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Writes `name`'s state file from [`StateFolder::encode`]'s bytes,
    /// atomically and durably (the second half of [`StateFolder::save`]).
    pub fn write_encoded(&self, name: &str, bytes: &[u8]) -> Result<(), StateError> {
        let path = self.path_of(name);
        write_atomically(&self.dir, &path, name, bytes)
            .map_err(|source| StateError::Write { path, source })
    }

    /// Writes a document tokd keeps beside the records, `KIND/NAME.json`
    /// (a consumer's discovered endpoints): not secret, but written the
    /// same way, atomically and durably, in a 0700 folder.
    pub fn save_document<T: Serialize>(
        &self,
        kind: &str,
        name: &str,
        value: &T,
    ) -> Result<(), StateError> {
        let folder = self.dir.join(kind);
        private_folder(&folder, "state folder")?;
        let path = folder.join(format!("{name}.json"));
        let mut bytes = serde_json::to_vec_pretty(value).map_err(|error| StateError::Write {
            path: path.clone(),
            source: io::Error::other(error),
        })?;
        bytes.push(b'\n');
        write_atomically(&folder, &path, name, &bytes)
            .map_err(|source| StateError::Write { path, source })
    }

    /// Reads a document [`StateFolder::save_document`] wrote. It is a cache: one
    /// that is missing, unreadable, not this user's or not what is
    /// expected is `None` (and is written anew).
    pub fn load_document<T: serde::de::DeserializeOwned>(
        &self,
        kind: &str,
        name: &str,
    ) -> Option<T> {
        let path = self.dir.join(kind).join(format!("{name}.json"));
        let bytes = self.read_own(&path)?;
        serde_json::from_slice(&bytes)
            .inspect_err(|error| tracing::warn!(path = %path.display(), %error, "not using an unreadable document"))
            .ok()
    }

    /// The keyring item `name`'s tokens were last written to, as its state
    /// file says (`None`: none recorded, or the file cannot be read).
    pub fn recorded_item(&self, name: &str) -> Option<String> {
        #[derive(Deserialize)]
        struct ItemOnly {
            #[serde(default)]
            keyring_item: Option<String>,
        }
        let bytes = Zeroizing::new(self.read_own(&self.path_of(name))?);
        serde_json::from_slice::<ItemOnly>(&bytes)
            .ok()?
            .keyring_item
    }

    /// The bytes of `path` if it is this user's regular file (no symlink
    /// followed); `None` otherwise.
    fn read_own(&self, path: &Path) -> Option<Vec<u8>> {
        let flags = rustix::fs::OFlags::RDONLY
            | rustix::fs::OFlags::CLOEXEC
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::NONBLOCK;
        let mut file = File::from(rustix::fs::open(path, flags, rustix::fs::Mode::empty()).ok()?);
        let metadata = file.metadata().ok()?;
        if !metadata.is_file() || metadata.uid() != self.uid {
            tracing::warn!(path = %path.display(), "not using a file that is not this user's regular file");
            return None;
        }
        read_all(&mut file, usize::try_from(metadata.len()).unwrap_or(0)).ok()
    }

    /// Deletes `name`'s record (after a revocation). Missing is fine.
    pub fn remove(&self, name: &str) -> Result<(), StateError> {
        let path = self.path_of(name);
        match fs::remove_file(&path) {
            Ok(()) => self
                .sync_folder()
                .map_err(|source| StateError::Write { path, source }),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Write { path, source }),
        }
    }
}

/// Writes `bytes` to `path` in `folder` atomically and durably: a
/// temporary file in the same folder, fsync, rename, fsync of the folder.
fn write_atomically(folder: &Path, path: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let temporary = folder.join(format!(
        ".{name}.json.tmp-{}-{}",
        std::process::id(),
        TEMPORARY_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temporary, path)
    })();
    if let Err(error) = written {
        // The old file is untouched; do not leave a half-written copy of
        // a token lying around either.
        let _ = fs::remove_file(&temporary);
        return Err(error);
    }
    sync_folder(folder)
}

impl StateFolder {
    fn sync_folder(&self) -> io::Result<()> {
        sync_folder(&self.dir)
    }

    fn move_aside(&self, name: &str, path: &Path, reason: String) -> Result<Loaded, StateError> {
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let mut moved_to = self.dir.join(format!("{name}.json.corrupt-{stamp}"));
        let mut attempt = 1;
        while fs::symlink_metadata(&moved_to).is_ok() {
            moved_to = self
                .dir
                .join(format!("{name}.json.corrupt-{stamp}-{attempt}"));
            attempt += 1;
        }
        fs::rename(path, &moved_to).map_err(|source| StateError::Read {
            path: path.to_owned(),
            source,
        })?;
        tracing::warn!(
            installation = name,
            moved_to = %moved_to.display(),
            "stored token file was {reason}; moved it aside, the installation starts empty"
        );
        Ok(Loaded::MovedAside { moved_to, reason })
    }

    /// Removes temporary files a crash left behind.
    fn remove_stale_temporaries(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let is_temporary = file_name
                .to_str()
                .is_some_and(|name| name.starts_with('.') && name.contains(".json.tmp-"));
            if !is_temporary {
                continue;
            }
            let stale = entry
                .metadata()
                .and_then(|metadata| metadata.modified())
                .ok()
                .and_then(|modified| modified.elapsed().ok())
                .is_some_and(|age| age > STALE_TEMPORARY);
            if stale {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

fn sync_folder(folder: &Path) -> io::Result<()> {
    File::open(folder)?.sync_all()
}

/// The whole of `file`, whose size was `size` a moment ago: a buffer of
/// that size (plus one byte, to notice growth) filled by plain reads. (std's
/// `read_to_end` would ask the size and position again.)
fn read_all(file: &mut File, size: usize) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0; size.saturating_add(1)];
    let mut filled = 0;
    loop {
        match file.read(&mut bytes[filled..]) {
            Ok(0) => break,
            Ok(read) => {
                filled += read;
                if filled == bytes.len() {
                    bytes.resize(filled * 2, 0);
                }
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    bytes.truncate(filled);
    Ok(bytes)
}

/// Sets a token file that others can read or write back to 0600; a file
/// that cannot be tightened is not used.
fn tighten_file(file: &File, path: &Path, metadata: &fs::Metadata) -> Result<(), StateError> {
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    match file.set_permissions(fs::Permissions::from_mode(0o600)) {
        Ok(()) => {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{mode:o}"),
                "token file had loose permissions; set them to 600"
            );
            Ok(())
        }
        Err(source) => {
            tracing::error!(
                path = %path.display(),
                mode = format_args!("{mode:o}"),
                error = %source,
                "token file has loose permissions and they cannot be set to 600; not using it"
            );
            Err(StateError::Permissions {
                path: path.to_owned(),
                mode,
                source,
            })
        }
    }
}

/// A short reason that names the JSON problem without quoting the content
/// (which holds tokens).
fn parse_reason(error: &serde_json::Error) -> String {
    let kind = match error.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "not valid JSON",
        serde_json::error::Category::Data => "not a token record",
        serde_json::error::Category::Eof => "truncated",
    };
    format!("{kind} (line {}, column {})", error.line(), error.column())
}

#[cfg(test)]
mod tests;
