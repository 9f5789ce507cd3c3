//! What the installations know of where their tokens are kept: the
//! storage itself (files, keyring, the target, moves) is `storage/`'s
//! [`Storage`]; here its outcomes become installation states.
//!
//! - Never a silent fallback: when the target is the keyring and it is
//!   locked or gone, the installation is `locked` (its `keyring_down`):
//!   nothing is asked of the provider, nothing is written in plain text,
//!   and a held valid token is still served. It checks every
//!   `KEYRING_RECHECK` (30 s) whether the keyring is back; a
//!   caller that needs a new token asks the desktop to unlock it.
//! - Moving: when the target differs from the store a record's tokens
//!   are in, they are moved (see [`Storage::save`]). An interrupted move
//!   is found and finished at the next start.

use super::Error;
use super::installation::{KEYRING_RECHECK, KeyringDown, Unsaved};
use super::slots::{Installations, Slot};
use crate::schedule;
use crate::secret::RefreshToken;
use crate::storage::{KeyringError, Record, SaveError, Storage, Store};
use crate::sync::lock;
use std::sync::Arc;
use tracing::{info, warn};

/// The failure to keep tokens as the installation's state tells it.
pub(crate) fn unsaved(error: &SaveError) -> Unsaved {
    Unsaved {
        why: error.to_string(),
        remedy: error.remedy(),
    }
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

/// The installations' side of their storage.
#[derive(Debug)]
pub struct Keeper {
    installations: Arc<Installations>,
    storage: Arc<Storage>,
    /// When the keyring was last found back (see `others_may_carry_on`).
    back_at: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Keeper {
    pub(super) fn new(installations: Arc<Installations>, storage: Arc<Storage>) -> Self {
        Self {
            installations,
            storage,
            back_at: std::sync::Mutex::new(None),
        }
    }

    /// Where tokens are kept.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Writes `slot`'s `record` to the target; returns the store it went
    /// to.
    pub(super) async fn save(&self, slot: &Slot, record: &Record) -> Result<Store, SaveError> {
        self.storage
            .save(&slot.name, &slot.spec().consumer.name, record)
            .await
    }

    /// The store `name`'s tokens are in (`None`: it holds none).
    pub fn store_of(&self, name: &str) -> Option<Store> {
        let slot = self.installations.get(name).ok()?;
        let inner = lock(&slot.inner);
        let installation = &inner.installation;
        (installation.record.refresh_token.is_some()
            || installation.record.access_token.is_some()
            || installation.tokens_unread)
            .then_some(installation.record.store)
    }

    /// Changes the target (a reload) and moves what must move.
    pub(super) async fn retarget(&self, target: Store) {
        if self.storage.retarget(target) {
            self.move_all().await;
        }
    }

    /// Reads the tokens the keyring keeps for the installations in `slots`
    /// that have not read theirs (at start, and for those a reload adds),
    /// in one search and one read.
    pub(super) async fn read_keyring(&self, slots: Vec<Arc<Slot>>) {
        let unread: Vec<Arc<Slot>> = slots
            .into_iter()
            .filter(|slot| lock(&slot.inner).installation.tokens_unread)
            .collect();
        if unread.is_empty() {
            return;
        }
        let read = self.storage.keyring_tokens().await;
        for slot in unread {
            let mut inner = lock(&slot.inner);
            match &read {
                Ok(all) => {
                    let tokens = all.get(&*slot.name);
                    if tokens.is_none() {
                        warn!(installation = %slot.name, "the keyring holds no tokens for it (was the item deleted?); it needs a login");
                    }
                    let tokens = tokens.cloned();
                    self.installations
                        .change(&slot, &mut inner, |installation, _| {
                            installation.tokens_read(
                                tokens.as_ref().and_then(|t| t.access_token.clone()),
                                tokens.and_then(|t| t.refresh_token),
                            );
                        });
                }
                Err(error) => {
                    warn!(installation = %slot.name, %error, "cannot read the tokens from the keyring; the installation is locked until it can");
                    self.installations
                        .change(&slot, &mut inner, |installation, _| {
                            installation.keyring_down = Some(Box::new(down(error)));
                        });
                }
            }
        }
    }

    /// Reads the tokens the keyring keeps for every installation (at
    /// start, before the name is taken).
    pub async fn read_keyring_all(&self) {
        self.read_keyring(self.installations.all()).await;
        let (mut in_keyring, mut in_files) = (0usize, 0usize);
        for slot in self.installations.all() {
            match self.store_of(&slot.name) {
                Some(Store::Keyring) => in_keyring += 1,
                Some(Store::File) => in_files += 1,
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
        let target = self.storage.target();
        let mut moved = 0usize;
        for slot in self.installations.all() {
            if !self.must_move(&slot, target) {
                continue;
            }
            let Ok(_guard) = self.installations.flight(&slot).await else {
                return;
            };
            // In the keyring and not read: read first (which moves them).
            if lock(&slot.inner).installation.tokens_unread {
                if self.gate(&slot, false).await.is_ok() && !self.must_move(&slot, target) {
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
                target.place()
            );
        }
        if target == Store::File {
            self.remove_leftovers().await;
        }
    }

    fn must_move(&self, slot: &Slot, target: Store) -> bool {
        let inner = lock(&slot.inner);
        let installation = &inner.installation;
        let holds = installation.record.refresh_token.is_some()
            || installation.record.access_token.is_some();
        (holds || installation.tokens_unread) && installation.record.store != target
    }

    /// Moves one installation's tokens to the target; the caller holds
    /// `flight`. Returns whether they moved.
    async fn move_one(&self, slot: &Slot) -> bool {
        let target = self.storage.target();
        let record = {
            let inner = lock(&slot.inner);
            if inner.installation.tokens_unread {
                return false;
            }
            inner.installation.record.clone()
        };
        if record.store == target {
            return false;
        }
        match self.save(slot, &record).await {
            Ok(store) => {
                lock(&slot.inner).installation.record.store = store;
                info!(installation = %slot.name, "moved its tokens {}", store.place());
                true
            }
            Err(error) => {
                warn!(installation = %slot.name, %error, "cannot move its tokens now; tokd tries again");
                if let SaveError::Keyring(error) = &error {
                    let mut inner = lock(&slot.inner);
                    self.installations
                        .change(slot, &mut inner, |installation, _| {
                            installation.keyring_down = Some(Box::new(down(error)));
                        });
                }
                false
            }
        }
    }

    /// Deletes keyring items whose installation keeps its tokens in its
    /// state file now (a move to the files cut short before the delete).
    async fn remove_leftovers(&self) {
        let removed = self
            .storage
            .remove_keyring_leftovers(|name| {
                self.installations.get(name).is_ok_and(|slot| {
                    let inner = lock(&slot.inner);
                    inner.installation.record.store == Store::File
                        && inner.installation.record.refresh_token.is_some()
                })
            })
            .await;
        for name in removed {
            info!(installation = %name, "removed its old keyring item (a move to the state files had been cut short)");
        }
    }

    /// Makes the keyring usable for `slot` if the slot needs it: reads
    /// tokens not read yet and finishes a move; `prompt`: a caller needs a
    /// new token, so the desktop is asked to unlock a locked keyring. On
    /// failure the installation is `locked`. The caller holds `flight`.
    pub(super) async fn gate(&self, slot: &Slot, prompt: bool) -> Result<(), Error> {
        let needed = {
            let inner = lock(&slot.inner);
            let installation = &inner.installation;
            self.storage.target() == Store::Keyring
                || installation.record.store == Store::Keyring
                || installation.keyring_down.is_some()
        };
        if !needed {
            return Ok(());
        }
        let outcome = match self.storage.keyring_ready(prompt).await {
            Ok(()) if lock(&slot.inner).installation.tokens_unread => {
                self.storage.keyring_tokens_of(&slot.name).await.map(Some)
            }
            outcome => outcome.map(|()| None),
        };
        let mut back = false;
        let result = {
            let mut inner = lock(&slot.inner);
            match outcome {
                Ok(read) => {
                    back = inner.installation.keyring_down.is_some();
                    self.installations
                        .change(slot, &mut inner, |installation, _| {
                            if let Some(tokens) = read {
                                installation.tokens_read(
                                    tokens.as_ref().and_then(|t| t.access_token.clone()),
                                    tokens.and_then(|t| t.refresh_token),
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
                    let message =
                        self.installations
                            .change(slot, &mut inner, |installation, spec| {
                                installation.keyring_down = Some(Box::new(down(&error)));
                                installation.message(spec, self.installations.clock.now())
                            });
                    Err(Error::Locked(message))
                }
            }
        };
        if back {
            info!(installation = %slot.name, "the keyring is usable again");
            self.others_may_carry_on();
        }
        // A move the keyring's absence held up.
        if result.is_ok() && self.must_move(slot, self.storage.target()) {
            self.move_one(slot).await;
        }
        result
    }

    /// The keyring is back: the others waiting for it need not wait for
    /// their own next check. They are checked now, spread over a few
    /// seconds as overdue ones are at start.
    /// (Once per return: the others, finding it back in turn, do not
    /// each go through every installation again.)
    fn others_may_carry_on(&self) {
        let installations = &self.installations;
        let monotonic = installations.clock.monotonic();
        {
            let mut back_at = lock(&self.back_at);
            if back_at.is_some_and(|at| monotonic.saturating_duration_since(at) < KEYRING_RECHECK) {
                return;
            }
            *back_at = Some(monotonic);
        }
        let now = installations.clock.now();
        for other in installations.all() {
            if lock(&other.inner).installation.keyring_down.is_some() {
                let spread = schedule::OVERDUE_SPREAD.mul_f64(schedule::random_fraction());
                installations.queue.set(&other.name, Some(now + spread));
            }
        }
    }

    /// The stored record of `slot` when its refresh token is not `used`
    /// (another writer put a newer one there).
    pub(super) async fn newer_stored(&self, slot: &Slot, used: &RefreshToken) -> Option<Record> {
        self.storage
            .load_with_tokens(&slot.name)
            .await
            .filter(|record| {
                record
                    .refresh_token
                    .as_ref()
                    .is_some_and(|token| token != used)
            })
    }
}
