//! Where each installation's tokens are kept: in its state file, or in
//! the user's keyring (`keyring/`), with the state file keeping the rest.
//!
//! - The *target* is where new tokens go: `[daemon] store`, else the
//!   choice made at first start (the keyring when one answered, else the
//!   files), kept in `STATE/daemon/store.json`.
//! - Durable first, in both: a keyring write is confirmed by the Secret
//!   Service before the state file is rewritten without the tokens, and
//!   before anyone sees the new access token (`refresh.rs::accept`).
//! - Never a silent fallback: when the target is the keyring and it is
//!   locked or gone, the installation is `locked` (its `keyring_down`):
//!   nothing is asked of the provider, nothing is written in plain text,
//!   and a held valid token is still served. It checks every
//!   `KEYRING_RECHECK` (30 s) whether the keyring is back; a
//!   caller that needs a new token asks the desktop to unlock it.
//! - Moving: when the target differs from where a record's tokens are,
//!   they are written to the target, confirmed, then removed from the
//!   other place. An interrupted move is found and finished at the next
//!   start.

use super::installation::{KeyringDown, Unsaved};
use super::{Broker, Error, Slot};
use crate::keyring::{Keyring, KeyringError, Secrets};
use crate::secret::RefreshToken;
use crate::store::{Loaded, Record, SecretStore, Store, StoreError};
use crate::sync::{lock, read, write};
use std::sync::Arc;
use tracing::{info, warn};

/// Where the first-start choice is kept in the state folder.
const CHOICE: (&str, &str) = ("daemon", "store");

/// Why a record could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Keyring(#[from] KeyringError),
}

impl SaveError {
    /// The failure as the installation's state tells it, with what the
    /// user can do: the fix for a full disk is not the fix for a locked
    /// keyring.
    pub fn unsaved(&self) -> Unsaved {
        let remedy = match self {
            SaveError::Store(_) => "free space or fix the state folder",
            SaveError::Keyring(KeyringError::Locked) => "unlock the keyring",
            SaveError::Keyring(KeyringError::Gone) => {
                "start the keyring (GNOME Keyring, KWallet, KeePassXC)"
            }
            SaveError::Keyring(KeyringError::Failed(_)) => "see tokd's log",
        };
        Unsaved {
            why: self.to_string(),
            remedy,
        }
    }
}

/// The target when the config names none: the first start's choice, made
/// now if there was none (the keyring when a Secret Service with a default
/// collection answers, else the files) and kept.
pub async fn default_target(store: &Store, keyring: Option<&Keyring>) -> SecretStore {
    let kept = store.clone();
    let chosen =
        tokio::task::spawn_blocking(move || kept.load_document::<SecretStore>(CHOICE.0, CHOICE.1))
            .await
            .ok()
            .flatten();
    if let Some(chosen) = chosen {
        return chosen;
    }
    let target = match keyring {
        Some(keyring) => match keyring.present().await {
            Ok(()) => SecretStore::Keyring,
            Err(_) => SecretStore::File,
        },
        None => SecretStore::File,
    };
    let kept = store.clone();
    let saved =
        tokio::task::spawn_blocking(move || kept.save_document(CHOICE.0, CHOICE.1, &target)).await;
    if !matches!(saved, Ok(Ok(()))) {
        warn!("cannot keep the choice of where tokens go; it is made again at the next start");
    }
    info!(
        store = target.as_str(),
        "chose where tokens are kept (no `store` in [daemon])"
    );
    target
}

fn down(error: &KeyringError) -> KeyringDown {
    match error {
        KeyringError::Locked => KeyringDown::Locked,
        KeyringError::Gone => KeyringDown::Gone,
        KeyringError::Failed(detail) => KeyringDown::Failing {
            detail: detail.clone(),
        },
    }
}

impl Broker {
    /// Uses `keyring` (on tokd's bus connection) and sends new tokens to
    /// `target`. Called once, before [`Broker::read_keyring`].
    pub fn use_keyring(&self, keyring: Option<Arc<Keyring>>, target: SecretStore) {
        if let Some(keyring) = keyring {
            let _ = self.keyring.set(keyring);
        }
        *write(&self.target) = target;
        info!(
            store = target.as_str(),
            "tokens are kept {}",
            where_(target)
        );
    }

    /// Where new tokens go now.
    pub fn target(&self) -> SecretStore {
        *read(&self.target)
    }

    /// Where the tokens of `name` are now (`None`: it holds none).
    pub fn tokens_in(&self, name: &str) -> Option<SecretStore> {
        let slot = self.slot(name).ok()?;
        let inner = lock(&slot.inner);
        let installation = &inner.installation;
        (installation.record.refresh_token.is_some()
            || installation.record.access_token.is_some()
            || installation.tokens_unread)
            .then_some(installation.record.secrets)
    }

    /// Changes the target (a reload) and moves what must move.
    pub(crate) async fn retarget(&self, target: SecretStore) {
        if self.target() == target {
            return;
        }
        *write(&self.target) = target;
        info!(
            store = target.as_str(),
            "tokens are kept {} from now on",
            where_(target)
        );
        self.move_all().await;
    }

    /// Reads the tokens the keyring keeps for the installations in `slots`
    /// that have not read theirs (at start, and for those a reload adds),
    /// in one search and one read.
    pub(crate) async fn read_keyring(&self, slots: Vec<Arc<Slot>>) {
        let unread: Vec<Arc<Slot>> = slots
            .into_iter()
            .filter(|slot| lock(&slot.inner).installation.tokens_unread)
            .collect();
        if unread.is_empty() {
            return;
        }
        let read = match self.keyring.get() {
            Some(keyring) => keyring.load_all().await,
            None => Err(KeyringError::Gone),
        };
        for slot in unread {
            let mut inner = lock(&slot.inner);
            match &read {
                Ok(all) => {
                    let secrets = all.get(&*slot.name);
                    if secrets.is_none() {
                        warn!(installation = %slot.name, "the keyring holds no tokens for it (was the item deleted?); it needs a login");
                    }
                    let secrets = secrets.cloned();
                    self.change(&slot, &mut inner, |installation, _| {
                        installation.tokens_read(
                            secrets.as_ref().and_then(|s| s.access_token.clone()),
                            secrets.and_then(|s| s.refresh_token),
                        );
                    });
                }
                Err(error) => {
                    warn!(installation = %slot.name, %error, "cannot read the tokens from the keyring; the installation is locked until it can");
                    self.change(&slot, &mut inner, |installation, _| {
                        installation.keyring_down = Some(down(error));
                    });
                }
            }
        }
    }

    /// Reads the tokens the keyring keeps for every installation (at
    /// start, before the name is taken).
    pub async fn read_keyring_all(&self) {
        self.read_keyring(self.all_slots()).await;
        let (mut in_keyring, mut in_files) = (0usize, 0usize);
        for slot in self.all_slots() {
            match self.tokens_in(&slot.name) {
                Some(SecretStore::Keyring) => in_keyring += 1,
                Some(SecretStore::File) => in_files += 1,
                None => {}
            }
        }
        info!(
            in_keyring,
            in_files, "where the installations' tokens are (`tokctl status NAME` says for each)"
        );
    }

    /// Moves every installation's tokens to the target (at start once the
    /// name is owned, and when a reload changes the target), and removes
    /// what an interrupted move left in the keyring.
    pub async fn move_all(&self) {
        let target = self.target();
        let mut moved = 0usize;
        for slot in self.all_slots() {
            if !self.must_move(&slot, target) {
                continue;
            }
            let Ok(_guard) = self.flight(&slot).await else {
                return;
            };
            // In the keyring and not read: read first (which moves them).
            if lock(&slot.inner).installation.tokens_unread {
                if self.keyring_gate(&slot, false).await.is_ok() && !self.must_move(&slot, target) {
                    moved += 1;
                }
                continue;
            }
            if self.move_one(&slot).await {
                moved += 1;
            }
        }
        if moved > 0 {
            info!(
                moved,
                store = target.as_str(),
                "moved tokens {}",
                where_(target)
            );
        }
        if target == SecretStore::File {
            self.remove_leftovers().await;
        }
    }

    fn must_move(&self, slot: &Slot, target: SecretStore) -> bool {
        let inner = lock(&slot.inner);
        let installation = &inner.installation;
        let holds = installation.record.refresh_token.is_some()
            || installation.record.access_token.is_some();
        (holds || installation.tokens_unread) && installation.record.secrets != target
    }

    /// Moves one installation's tokens to the target; the caller holds
    /// `flight`. Returns whether they moved.
    async fn move_one(&self, slot: &Slot) -> bool {
        let target = self.target();
        let record = {
            let inner = lock(&slot.inner);
            if inner.installation.tokens_unread {
                return false;
            }
            inner.installation.record.clone()
        };
        if record.secrets == target {
            return false;
        }
        match self
            .save(&slot.name, &slot.spec().consumer.name, &record)
            .await
        {
            Ok(()) => {
                lock(&slot.inner).installation.record.secrets = target;
                info!(installation = %slot.name, "moved its tokens {}", where_(target));
                true
            }
            Err(error) => {
                warn!(installation = %slot.name, %error, "cannot move its tokens now; tokd tries again");
                if let SaveError::Keyring(error) = &error {
                    let mut inner = lock(&slot.inner);
                    self.change(slot, &mut inner, |installation, _| {
                        installation.keyring_down = Some(down(error));
                    });
                }
                false
            }
        }
    }

    /// Deletes keyring items whose installation keeps its tokens in its
    /// state file now (a move to the files cut short before the delete).
    async fn remove_leftovers(&self) {
        let Some(keyring) = self.keyring.get() else {
            return;
        };
        let Ok(items) = keyring.load_all().await else {
            return;
        };
        for name in items.keys() {
            let in_file = self.slot(name).is_ok_and(|slot| {
                let inner = lock(&slot.inner);
                inner.installation.record.secrets == SecretStore::File
                    && inner.installation.record.refresh_token.is_some()
            });
            if in_file && keyring.delete(name).await.is_ok() {
                info!(installation = %name, "removed its old keyring item (a move to the state files had been cut short)");
            }
        }
    }

    /// Makes the keyring usable for `slot` if the slot needs it: reads
    /// tokens not read yet and finishes a move; `prompt`: a caller needs a
    /// new token, so the desktop is asked to unlock a locked keyring. On
    /// failure the installation is `locked`. The caller holds `flight`.
    pub(crate) async fn keyring_gate(&self, slot: &Slot, prompt: bool) -> Result<(), Error> {
        let needed = {
            let inner = lock(&slot.inner);
            let installation = &inner.installation;
            self.target() == SecretStore::Keyring
                || installation.record.secrets == SecretStore::Keyring
                || installation.keyring_down.is_some()
        };
        if !needed {
            return Ok(());
        }
        let outcome = match self.keyring.get() {
            None => Err(KeyringError::Gone),
            Some(keyring) if prompt => match keyring.unlock().await {
                Ok(true) => Ok(()),
                Ok(false) => Err(KeyringError::Locked),
                Err(error) => Err(error),
            },
            Some(keyring) => keyring.ready().await,
        };
        let outcome = match (outcome, self.keyring.get()) {
            (Ok(()), Some(keyring)) if lock(&slot.inner).installation.tokens_unread => {
                keyring.load(&slot.name).await.map(Some)
            }
            (outcome, _) => outcome.map(|()| None),
        };
        let result = {
            let mut inner = lock(&slot.inner);
            match outcome {
                Ok(read) => {
                    self.change(slot, &mut inner, |installation, _| {
                        if let Some(secrets) = read {
                            installation.tokens_read(
                                secrets.as_ref().and_then(|s| s.access_token.clone()),
                                secrets.and_then(|s| s.refresh_token),
                            );
                        }
                        installation.keyring_down = None;
                    });
                    Ok(())
                }
                Err(error) => {
                    if inner.installation.keyring_down.is_none() {
                        warn!(installation = %slot.name, %error, "the keyring cannot be used now; the installation is locked until it can");
                    }
                    let message = self.change(slot, &mut inner, |installation, spec| {
                        installation.keyring_down = Some(down(&error));
                        installation.message(spec, self.clock.now())
                    });
                    Err(Error::Locked(message))
                }
            }
        };
        // A move the keyring's absence held up.
        if result.is_ok() && self.must_move(slot, self.target()) {
            self.move_one(slot).await;
        }
        result
    }

    /// Writes `record` where tokens go now. To the keyring: the item first
    /// (confirmed by the Secret Service), then the state file without the
    /// tokens. To the files: the state file with them, then the keyring's
    /// old item, if any, is deleted.
    pub(crate) async fn save(
        &self,
        name: &str,
        consumer: &str,
        record: &Record,
    ) -> Result<(), SaveError> {
        let was = record.secrets;
        let file_record = match self.target() {
            SecretStore::Keyring => {
                let keyring = self.keyring.get().ok_or(KeyringError::Gone)?;
                keyring
                    .save(
                        consumer,
                        &Secrets {
                            installation: name.to_owned(),
                            access_token: record.access_token.clone(),
                            refresh_token: record.refresh_token.clone(),
                        },
                    )
                    .await?;
                record.without_tokens()
            }
            SecretStore::File => Record {
                secrets: SecretStore::File,
                ..record.clone()
            },
        };
        self.write_file(name, file_record).await?;
        if was == SecretStore::Keyring
            && self.target() == SecretStore::File
            && let Some(keyring) = self.keyring.get()
            && let Err(error) = keyring.delete(name).await
        {
            // Written to the file already: the leftover goes at the next
            // start.
            warn!(installation = %name, %error, "cannot delete the old keyring item yet");
        }
        Ok(())
    }

    async fn write_file(&self, name: &str, record: Record) -> Result<(), StoreError> {
        let store = self.store.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || store.save(&name, &record))
            .await
            .unwrap_or_else(|error| Err(StoreError::Interrupted(error.to_string())))
    }

    /// Forgets `name`'s tokens wherever they are kept.
    pub(crate) async fn remove_stored(
        &self,
        name: &str,
        in_keyring: bool,
    ) -> Result<(), SaveError> {
        if in_keyring || self.target() == SecretStore::Keyring {
            let keyring = self.keyring.get().ok_or(KeyringError::Gone)?;
            keyring.delete(name).await?;
        }
        let store = self.store.clone();
        let file = name.to_owned();
        tokio::task::spawn_blocking(move || store.remove(&file))
            .await
            .unwrap_or_else(|error| Err(StoreError::Interrupted(error.to_string())))?;
        Ok(())
    }

    /// The stored record of `slot` when its refresh token is not `used`
    /// (another writer put a newer one there).
    pub(crate) async fn newer_stored(&self, slot: &Slot, used: &RefreshToken) -> Option<Record> {
        let store = self.store.clone();
        let file = slot.name.to_string();
        let loaded = tokio::task::spawn_blocking(move || store.load(&file)).await;
        let Ok(Ok(Loaded::Found(mut record))) = loaded else {
            return None;
        };
        if record.secrets == SecretStore::Keyring {
            let secrets = self.keyring.get()?.load(&slot.name).await.ok()??;
            record.access_token = secrets.access_token;
            record.refresh_token = secrets.refresh_token;
        }
        record
            .refresh_token
            .as_ref()
            .is_some_and(|token| token != used)
            .then_some(record)
    }
}

fn where_(target: SecretStore) -> &'static str {
    match target {
        SecretStore::Keyring => "in the keyring (Secret Service)",
        SecretStore::File => "in the state files",
    }
}
