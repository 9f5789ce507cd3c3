//! Revocation: tell the provider (RFC 7009) when the consumer has a
//! revocation endpoint, then forget the tokens, on disk and in memory.

use super::slots::Slot;
use super::{Broker, Error};
use crate::oauth::{OAuthError, RevocableToken};
use crate::storage::{SaveError, Store};
use crate::sync::lock;
use tracing::info;

impl Broker {
    /// Revokes the installation's grant at the provider when it has a
    /// revocation endpoint, then forgets its tokens.
    pub async fn revoke(&self, name: &str) -> Result<String, Error> {
        let slot = self.installations.get(name)?;
        let guard = self.installations.flight(&slot).await?;
        let broker = self.arc();
        self.refresher
            .in_flight(guard, "revocation", async move {
                broker.revoke_locked(&slot).await
            })
            .await
    }

    async fn revoke_locked(&self, slot: &Slot) -> Result<String, Error> {
        let name = &slot.name;
        let spec = slot.spec();
        // Tokens in a locked keyring are read first (the desktop is asked).
        self.keeper.gate(slot, true).await?;
        let record = lock(&slot.inner).installation.record.clone();
        if record.access_token.is_none() && record.refresh_token.is_none() {
            return Ok(format!("`{name}` holds no token; nothing to revoke"));
        }
        let told_provider = self
            .resolver
            .endpoints(&spec.consumer)
            .await
            .is_ok_and(|endpoints| endpoints.revoke_url.is_some());
        if told_provider {
            let refused = |error: OAuthError| {
                Error::of_kind(
                    error.kind,
                    format!(
                        "the provider did not accept the revocation of `{name}` ({}); the tokens are kept, try again later",
                        error.message
                    ),
                )
            };
            let (http, consumer) = (&self.http, &spec.consumer);
            if let Some(token) = &record.refresh_token {
                self.resolver
                    .with_endpoints(consumer, |endpoints| async move {
                        http.revoke(consumer, &endpoints, RevocableToken::Refresh(token))
                            .await
                    })
                    .await
                    .map_err(refused)?;
            }
            if let Some(token) = &record.access_token {
                self.resolver
                    .with_endpoints(consumer, |endpoints| async move {
                        http.revoke(consumer, &endpoints, RevocableToken::Access(token))
                            .await
                    })
                    .await
                    .map_err(refused)?;
            }
        }
        let in_keyring = record.store == Store::Keyring;
        self.keeper
            .storage()
            .remove(name, in_keyring)
            .await
            .map_err(|error| match error {
                SaveError::Keyring(error) => Error::Locked(format!(
                    "cannot delete the keyring item of `{name}`: {error}; unlock or start the keyring and revoke again"
                )),
                SaveError::State(error) => Error::Misconfigured(format!(
                    "cannot remove the state file of `{name}`: {error}"
                )),
            })?;
        {
            let mut inner = lock(&slot.inner);
            self.installations
                .change(slot, &mut inner, |installation, _| installation.revoked());
            inner.finished(Ok(()));
        }
        self.installations.queue.set(name, None);
        info!(installation = %name, told_provider, "revoked");
        Ok(if told_provider {
            format!("revoked `{name}` at the provider and forgot its tokens")
        } else {
            format!(
                "forgot the tokens of `{name}`; consumer `{}` has no revoke_url, so also revoke the grant on the provider's website",
                spec.consumer.name
            )
        })
    }
}
