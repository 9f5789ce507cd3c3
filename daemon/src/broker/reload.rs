//! Reload: re-read the config file and apply it to new work. An invalid
//! file is refused and the running config stays. Installations whose name,
//! client, token URL, scopes and grant are unchanged keep their tokens and
//! schedules; those whose identity changed need a new login; new ones are
//! loaded from disk; removed ones are dropped with their pending logins.
//!
//! What the sentences tell users to fix and reload is what a reload
//! re-reads: a `misconfigured` installation is tried again under the new
//! config (its secret file back, its discovery document fixed), and one
//! whose state file could not be loaded reads it again.

use super::installation::Installation;
use super::slots::Slot;
use super::{Broker, Error, Event, specs_of};
use crate::config::Config;
use crate::sync::{lock, write};
use std::collections::BTreeMap;
use std::sync::Arc;
use tracing::info;

impl Broker {
    /// Re-reads the config file and applies it.
    pub async fn reload(&self) -> Result<String, Error> {
        self.installations.refuse_if_stopping()?;
        let Some(path) = self.config_path.clone() else {
            return Err(Error::InvalidArgument(
                "this tokd was started without a config file; restart it instead".to_owned(),
            ));
        };
        let config = tokio::task::spawn_blocking(move || {
            let config = Config::from_path(&path)?;
            for warning in config.warnings(&path) {
                tracing::warn!("{warning}");
            }
            Ok::<_, crate::config::ConfigError>(config)
        })
        .await
        .map_err(|error| Error::Misconfigured(error.to_string()))?
        .map_err(|error| {
            // Several problems: one sentence, "; " between.
            let problems: Vec<String> = error.problems().iter().map(ToString::to_string).collect();
            Error::Misconfigured(format!(
                "{}; the running config stays, fix the file and reload again",
                problems.join("; ")
            ))
        })?;
        let summary = config.summary();
        let configured = config.daemon.store;
        self.apply(config).await;
        let target = self.keeper.storage().wanted(configured).await;
        self.keeper.retarget(target).await;
        info!(%summary, "config reloaded");
        Ok(summary)
    }

    async fn apply(&self, config: Config) {
        let old: BTreeMap<Arc<str>, Arc<Slot>> = self.installations.map();
        let mut slots: BTreeMap<Arc<str>, Arc<Slot>> = BTreeMap::new();
        let mut changed = Vec::new();
        let mut added = Vec::new();
        // Kept installations whose state file could not be loaded: read
        // again (its mode fixed, say), as the sentence told the user.
        let mut reread = Vec::new();
        for spec in specs_of(&config) {
            let slot = match old.get(spec.name()) {
                Some(slot) if slot.spec().same_identity(&spec) => {
                    slot.set_spec(spec);
                    let mut inner = lock(&slot.inner);
                    if inner.installation.state_file_unusable() {
                        reread.push(slot.clone());
                    } else {
                        // A misconfiguration is the old config's: the
                        // next request (a get, or the schedule) tries the
                        // new one.
                        self.installations
                            .change(slot, &mut inner, |installation, _| {
                                installation.reconfigured();
                            });
                    }
                    drop(inner);
                    slot.clone()
                }
                Some(_) => {
                    // The tokens were issued to another client or for other
                    // scopes: they do not belong to this installation now.
                    let installation = Installation::identity_changed(&spec);
                    let now = self.installations.clock.now();
                    changed.push(Event::StateChanged {
                        name: spec.name().to_owned(),
                        state: installation.kind(),
                        message: installation.message(&spec, now),
                    });
                    Arc::new(Slot::new(spec, installation))
                }
                None => {
                    added.push(spec);
                    continue;
                }
            };
            slots.insert(slot.name.clone(), slot);
        }
        // New installations' records are read off the runtime thread: calls
        // are being answered meanwhile.
        let names: Vec<String> = added.iter().map(|spec| spec.name().to_owned()).collect();
        let loaded = self.keeper.storage().load_many(names).await;
        let mut new_slots = Vec::new();
        for (spec, loaded) in added.into_iter().zip(loaded) {
            let slot = Arc::new(Slot::loaded(spec, loaded));
            slots.insert(slot.name.clone(), slot.clone());
            new_slots.push(slot);
        }
        for slot in reread {
            // Read under the installation's `flight` lock: a request in
            // flight (a client-credentials refresh needs no state file)
            // writes its result first, and is not overwritten.
            let Ok(_guard) = self.installations.flight(&slot).await else {
                continue;
            };
            let result = self.keeper.storage().load(&slot.name).await;
            let loaded = super::slots::loaded_installation(&slot.spec(), result);
            let mut inner = lock(&slot.inner);
            self.installations
                .change(&slot, &mut inner, |installation, _| *installation = loaded);
            drop(inner);
            info!(installation = %slot.name, "read its state file again");
            new_slots.push(slot);
        }
        for name in old.keys().filter(|name| !slots.contains_key(*name)) {
            self.installations.queue.set(name, None);
            self.logins.forget(name);
        }
        self.installations
            .replace(slots, config.daemon.refresh_margin);
        *write(&self.daemon) = config.daemon;
        *write(&self.registries) = config.registries;
        *write(&self.kube_servers) = config.kube_servers;
        self.callers.set_policies(config.policies);
        self.keeper.read_keyring(new_slots).await;
        self.resolver.forget();
        for event in changed {
            self.installations.emit(event);
        }
        for slot in self.installations.all() {
            self.installations.schedule(&slot);
        }
    }
}
