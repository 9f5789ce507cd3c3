//! Where tokens are kept: [`Storage`], the one type that owns it.
//!
//! The words, used the same way in code, logs, D-Bus and docs:
//! - the **state folder** (`$XDG_STATE_HOME/tokd/`, [`StateFolder`]) holds
//!   one **state file** per installation (`NAME.json`, a [`Record`]): its
//!   expiry, scopes, last error, whom its tokens were issued to, and which
//!   store its tokens are in;
//! - a **store** ([`Store`], `[daemon] store` in the config, `tokens_in` in
//!   `tokctl status --json`, D-Bus `TokenStores`) is where an
//!   installation's **tokens** ([`Tokens`]: access and refresh token) are
//!   kept: `file` (in its state file) or `keyring` (in the user's keyring,
//!   a [`Keyring`]; the state file keeps the rest);
//! - the **target** is the store new tokens go to: `[daemon] store`, else
//!   the first start's choice (the keyring when one answered, else the
//!   files), kept in `STATE/daemon/store.json`;
//! - a **move** is tokens written to the target, confirmed, then removed
//!   from the other store (an interrupted one is finished at the next
//!   start).
//!
//! Durable first, in both stores: a keyring write is confirmed by the
//! keyring before the state file is rewritten without the tokens, and
//! [`Storage::save`] returns only then. Never a silent fallback: when the
//! target is the keyring and it cannot be written, `save` fails and nothing
//! is written in plain text. Every call here is async; the blocking file
//! work runs on the blocking pool inside.
//!
//! A new kind of keyring (a native KWallet, a password manager's CLI)
//! implements [`Keyring`] in a file of its own and is handed to
//! [`Storage::new`] by `server.rs`; nothing else changes.

mod secret_service;
mod state_folder;

pub use secret_service::{APPLICATION, CALL_TIMEOUT, PROMPT_PAUSE, SecretService, UNLOCK_WAIT};
pub use state_folder::{FORMAT_VERSION, Loaded, Record, StateError, StateFolder};

use crate::secret::{AccessToken, RefreshToken};
use crate::sync::{read, write};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use tracing::{info, warn};

/// Where the first-start choice of the target is kept in the state folder.
const CHOICE: (&str, &str) = ("daemon", "store");

/// Where an installation's tokens are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Store {
    /// In the state file, beside the rest of the record (0600).
    #[default]
    File,
    /// In the user's keyring; the state file holds the rest.
    Keyring,
}

impl Store {
    /// The name in the config, the logs and `tokctl status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Keyring => "keyring",
        }
    }

    /// Where that is, for a log line.
    pub fn place(self) -> &'static str {
        match self {
            Self::Keyring => "in the keyring (Secret Service)",
            Self::File => "in the state files",
        }
    }

    pub(crate) fn is_file(&self) -> bool {
        *self == Self::File
    }
}

/// One installation's tokens, as a keyring keeps them (with its name, so
/// that one read finds every installation's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    pub installation: String,
    #[serde(default)]
    pub access_token: Option<AccessToken>,
    #[serde(default)]
    pub refresh_token: Option<RefreshToken>,
}

/// One keyring item holding an installation's tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// The keyring's name for the item (a Secret Service object path).
    pub item: String,
    pub tokens: Tokens,
}

/// Why the keyring could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    #[error("no keyring (Secret Service) answers on the session bus")]
    Gone,
    #[error("the keyring is locked")]
    Locked,
    #[error("the keyring failed: {0}")]
    Failed(String),
}

/// What a keyring call returns: boxed, so that [`Keyring`] can be a trait
/// object.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = Result<T, KeyringError>> + Send + 'a>>;

/// A keyring: a store that keeps tokens outside the state file. Every call
/// is bounded by the implementation (a stalled keyring fails a call; it
/// never hangs tokd).
pub trait Keyring: std::fmt::Debug + Send + Sync {
    /// Whether a keyring answers at all, locked or not (the first start's
    /// choice of the target).
    fn present(&self) -> Pending<'_, ()>;
    /// Whether it can be written now (present and unlocked).
    fn ready(&self) -> Pending<'_, ()>;
    /// Asks the desktop to unlock it (its own dialog; tokd never asks for
    /// a password); whether it is unlocked now.
    fn unlock(&self) -> Pending<'_, bool>;
    /// Every item holding an installation's tokens, grouped by
    /// installation, each installation's in the order the keyring would
    /// choose them (its own kind of item first, then the newest).
    fn read_all(&self) -> Pending<'_, Vec<Kept>>;
    /// The items holding one installation's tokens, in the same order
    /// (empty: it keeps none).
    fn read<'a>(&'a self, name: &'a str) -> Pending<'a, Vec<Kept>>;
    /// Replaces one installation's tokens; returns the item they are in
    /// once the write is confirmed.
    fn write<'a>(&'a self, consumer: &'a str, tokens: &'a Tokens) -> Pending<'a, String>;
    /// Forgets one installation's tokens, if it keeps any.
    fn delete<'a>(&'a self, name: &'a str) -> Pending<'a, ()>;
}

/// Why tokens could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0}")]
    Keyring(#[from] KeyringError),
}

impl SaveError {
    /// What the user can do about it: the fix for a full disk is not the
    /// fix for a locked keyring.
    pub fn remedy(&self) -> &'static str {
        match self {
            SaveError::State(_) => "free space or fix the state folder",
            SaveError::Keyring(KeyringError::Locked) => "unlock the keyring",
            SaveError::Keyring(KeyringError::Gone) => {
                "start the keyring (GNOME Keyring, KWallet, KeePassXC)"
            }
            SaveError::Keyring(KeyringError::Failed(_)) => "see tokd's log",
        }
    }
}

/// Where tokens are kept: the state folder, the keyring, the target, and
/// the moves between stores.
#[derive(Debug)]
pub struct Storage {
    folder: StateFolder,
    /// The keyring, when tokd has a session bus.
    keyring: OnceLock<Arc<dyn Keyring>>,
    target: RwLock<Store>,
}

impl Storage {
    /// Storage in `folder`, using `keyring` if there is one, with the
    /// file store as the target until [`Storage::begin`].
    pub fn new(folder: StateFolder, keyring: Option<Arc<dyn Keyring>>) -> Self {
        Self {
            folder,
            keyring: keyring.map(OnceLock::from).unwrap_or_default(),
            target: RwLock::new(Store::File),
        }
    }

    /// The state folder.
    pub fn folder(&self) -> &StateFolder {
        &self.folder
    }

    /// Sets the target at start: the `configured` store, else the first
    /// start's choice.
    pub async fn begin(&self, configured: Option<Store>) {
        let target = self.wanted(configured).await;
        *write(&self.target) = target;
        info!(
            store = target.as_str(),
            "tokens are kept {}",
            target.place()
        );
    }

    /// The target the config asks for: the `configured` store, else the
    /// first start's choice.
    pub async fn wanted(&self, configured: Option<Store>) -> Store {
        match configured {
            Some(store) => store,
            None => self.chosen_target().await,
        }
    }

    /// The store new tokens go to.
    pub fn target(&self) -> Store {
        *read(&self.target)
    }

    /// Makes `target` the store new tokens go to (a reload); whether it
    /// changed. The caller moves what must move.
    pub fn retarget(&self, target: Store) -> bool {
        let changed = std::mem::replace(&mut *write(&self.target), target) != target;
        if changed {
            info!(
                store = target.as_str(),
                "tokens are kept {} from now on",
                target.place()
            );
        }
        changed
    }

    /// The target when the config names none: the first start's choice,
    /// made now if there was none (the keyring when one with a default
    /// collection answers, else the files) and kept.
    async fn chosen_target(&self) -> Store {
        if let Some(chosen) = self.load_document::<Store>(CHOICE.0, CHOICE.1).await {
            return chosen;
        }
        let target = match self.keyring.get() {
            Some(keyring) if keyring.present().await.is_ok() => Store::Keyring,
            _ => Store::File,
        };
        if self
            .save_document(CHOICE.0, CHOICE.1, &target)
            .await
            .is_err()
        {
            warn!("cannot keep the choice of where tokens go; it is made again at the next start");
        }
        info!(
            store = target.as_str(),
            "chose where tokens are kept (no `store` in [daemon])"
        );
        target
    }

    /// Whether the keyring can be used now; `prompt`: a caller needs a new
    /// token, so the desktop is asked to unlock a locked keyring.
    pub async fn keyring_ready(&self, prompt: bool) -> Result<(), KeyringError> {
        match self.keyring.get() {
            None => Err(KeyringError::Gone),
            Some(keyring) if prompt => match keyring.unlock().await {
                Ok(true) => Ok(()),
                Ok(false) => Err(KeyringError::Locked),
                Err(error) => Err(error),
            },
            Some(keyring) => keyring.ready().await,
        }
    }

    /// Every installation's tokens in the keyring, by name.
    pub async fn keyring_tokens(&self) -> Result<HashMap<String, Tokens>, KeyringError> {
        let kept = self.keyring()?.read_all().await?;
        Ok(self.choose(kept).await)
    }

    /// `name`'s tokens in the keyring (`None`: it keeps none).
    pub async fn keyring_tokens_of(&self, name: &str) -> Result<Option<Tokens>, KeyringError> {
        let kept = self.keyring()?.read(name).await?;
        Ok(self.choose(kept).await.remove(name))
    }

    /// One item per installation out of what the keyring holds. Where it
    /// holds several for one installation (an older tokd's, one a renamed
    /// consumer left, one planted by another program), the item tokd last
    /// wrote, as its state file records, comes first; else the keyring's
    /// order. The others are named in a warning. Never whichever the
    /// keyring happened to list first.
    async fn choose(&self, kept: Vec<Kept>) -> HashMap<String, Tokens> {
        let mut chosen: HashMap<String, Tokens> = HashMap::with_capacity(kept.len());
        let mut kept = kept.into_iter().peekable();
        while let Some(first) = kept.next() {
            let name = first.tokens.installation.clone();
            let mut items = vec![first];
            while let Some(next) = kept.next_if(|next| next.tokens.installation == name) {
                items.push(next);
            }
            if items.len() > 1 {
                let file = name.clone();
                let recorded = self
                    .blocking(move |folder| Ok(folder.recorded_item(&file)))
                    .await
                    .ok()
                    .flatten();
                if let Some(at) =
                    recorded.and_then(|recorded| items.iter().position(|k| k.item == recorded))
                {
                    let own = items.remove(at);
                    items.insert(0, own);
                }
                let others: Vec<&str> = items[1..].iter().map(|k| k.item.as_str()).collect();
                warn!(
                    installation = %name,
                    used = %items[0].item,
                    others = %others.join(", "),
                    "the keyring holds more than one item for this installation; using the one tokd wrote last (its state file records it), else the one with exactly tokd's attributes, else the newest; remove the others with `secret-tool clear` or your keyring's manager"
                );
            }
            if let Some(own) = items.into_iter().next() {
                chosen.insert(name, own.tokens);
            }
        }
        chosen
    }

    fn keyring(&self) -> Result<&Arc<dyn Keyring>, KeyringError> {
        self.keyring.get().ok_or(KeyringError::Gone)
    }

    /// The state files of `names`, in order, read right here: tokd calls
    /// this at start before anything else runs, on the runtime's thread,
    /// so that the records' memory comes from the main heap (the blocking
    /// pool's threads would use a second malloc arena: about 3 MiB more
    /// with 10,000 installations).
    pub fn load_at_start<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Vec<Result<Loaded, StateError>> {
        self.folder.load_many(names)
    }

    /// The state files of `names`, in order, read on the blocking pool.
    pub async fn load_many(&self, names: Vec<String>) -> Vec<Result<Loaded, StateError>> {
        let count = names.len();
        let mut loaded = self
            .blocking(move |folder| Ok(folder.load_many(names.iter().map(String::as_str))))
            .await
            .unwrap_or_default();
        loaded.resize_with(count, || {
            Err(StateError::Interrupted("the state loader failed".into()))
        });
        loaded
    }

    /// `name`'s state file.
    pub async fn load(&self, name: &str) -> Result<Loaded, StateError> {
        let name = name.to_owned();
        self.blocking(move |folder| folder.load(&name)).await
    }

    /// `name`'s record with its tokens, wherever they are kept (`None`: no
    /// state file, or its tokens cannot be read now).
    pub async fn load_with_tokens(&self, name: &str) -> Option<Record> {
        let Ok(Loaded::Found(mut record)) = self.load(name).await else {
            return None;
        };
        if record.store == Store::Keyring {
            let tokens = self.keyring_tokens_of(name).await.ok()??;
            record.access_token = tokens.access_token;
            record.refresh_token = tokens.refresh_token;
        }
        Some(record)
    }

    /// Writes `record` to the target and returns it (the store its tokens
    /// are in now). To the keyring: the tokens first (confirmed), then
    /// the state file without them. To the files: the state file with
    /// them; then, if they were in the keyring (`record.store`), the
    /// keyring forgets them (a failure there is left for the next start).
    pub async fn save(
        &self,
        name: &str,
        consumer: &str,
        record: &Record,
    ) -> Result<Store, SaveError> {
        let target = self.target();
        let file_record = match target {
            Store::Keyring => {
                let tokens = Tokens {
                    installation: name.to_owned(),
                    access_token: record.access_token.clone(),
                    refresh_token: record.refresh_token.clone(),
                };
                let item = self.keyring()?.write(consumer, &tokens).await?;
                (record.without_tokens(), Some(item))
            }
            Store::File => (
                Record {
                    store: Store::File,
                    ..record.clone()
                },
                None,
            ),
        };
        // Encoded here, written on the blocking pool.
        let bytes = self
            .folder
            .encode(name, &file_record.0, file_record.1.as_deref())?;
        drop(file_record);
        let file = name.to_owned();
        self.blocking(move |folder| folder.write_encoded(&file, &bytes))
            .await?;
        if record.store == Store::Keyring
            && target == Store::File
            && let Some(keyring) = self.keyring.get()
            && let Err(error) = keyring.delete(name).await
        {
            warn!(installation = %name, %error, "cannot delete the old keyring item yet");
        }
        Ok(target)
    }

    /// Forgets `name`'s tokens in every store they may be in
    /// (`in_keyring`: its record says the keyring).
    pub async fn remove(&self, name: &str, in_keyring: bool) -> Result<(), SaveError> {
        if in_keyring || self.target() == Store::Keyring {
            self.keyring()?.delete(name).await?;
        }
        let file = name.to_owned();
        self.blocking(move |folder| folder.remove(&file)).await?;
        Ok(())
    }

    /// Deletes the keyring's tokens of the installations `in_file` says
    /// keep theirs in the state file now (a move to the files cut short
    /// before the delete); returns their names.
    pub async fn remove_keyring_leftovers(&self, in_file: impl Fn(&str) -> bool) -> Vec<String> {
        let Some(keyring) = self.keyring.get() else {
            return Vec::new();
        };
        let Ok(kept) = keyring.read_all().await else {
            return Vec::new();
        };
        let mut removed: Vec<String> = Vec::new();
        for name in kept.iter().map(|kept| &kept.tokens.installation) {
            if in_file(name) && removed.last() != Some(name) && keyring.delete(name).await.is_ok() {
                removed.push(name.clone());
            }
        }
        removed
    }

    /// Writes a document tokd keeps beside the state files (see
    /// [`StateFolder::save_document`]).
    pub async fn save_document<T: Serialize + Send + Sync + Clone + 'static>(
        &self,
        kind: &'static str,
        name: &str,
        value: &T,
    ) -> Result<(), StateError> {
        let (name, value) = (name.to_owned(), value.clone());
        self.blocking(move |folder| folder.save_document(kind, &name, &value))
            .await
    }

    /// Reads a document [`Storage::save_document`] wrote (`None`: missing
    /// or unusable).
    pub async fn load_document<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        kind: &'static str,
        name: &str,
    ) -> Option<T> {
        let name = name.to_owned();
        self.blocking(move |folder| Ok(folder.load_document(kind, &name)))
            .await
            .ok()
            .flatten()
    }

    /// Runs `work` on the state folder on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&StateFolder) -> Result<T, StateError> + Send + 'static,
    ) -> Result<T, StateError> {
        let folder = self.folder.clone();
        tokio::task::spawn_blocking(move || work(&folder))
            .await
            .unwrap_or_else(|error| Err(StateError::Interrupted(error.to_string())))
    }
}
