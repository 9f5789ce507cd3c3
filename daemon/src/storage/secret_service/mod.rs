//! The user's keyring, through the Secret Service API
//! (`org.freedesktop.secrets`: GNOME Keyring, KWallet ≥ 5.97, KeePassXC)
//! on tokd's own session-bus connection.
//!
//! Each installation's tokens are one item in the default collection:
//! labelled `tokd: NAME (CONSUMER)`, with the attributes `application =
//! tokd`, `installation = NAME`, `consumer = CONSUMER`, and a JSON secret
//! holding the installation's name and its tokens (the name inside, so
//! that one `GetTokens` call reads every installation at start).
//!
//! Tokens cross the bus in a `plain` session: the session bus is this
//! user's alone, and the other algorithm the API defines
//! (`dh-ietf1024-sha256-aes128-cbc-pkcs7`) would need a bignum and an
//! AES-CBC crate for a transport no other user can read.
//!
//! tokd never asks for a password: a locked collection is unlocked by the
//! Secret Service's own prompt, which [`SecretService::unlock`] asks for (the
//! desktop shows its dialog). Every call is bounded by [`CALL_TIMEOUT`], so
//! a stalled keyring costs a failed write (retried), never a hung daemon.

mod proxies;

use super::{Kept, Keyring, KeyringError, Pending, Tokens};
use proxies::{CollectionProxy, ItemProxy, PromptProxy, ServiceProxy, WireSecret};
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;
use zbus::{OwnedObjectPath, Variant};
use zeroize::Zeroizing;

/// The longest one exchange with the Secret Service may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long tokd waits for the user to answer an unlock prompt.
pub const UNLOCK_WAIT: Duration = Duration::from_secs(50);
/// After a prompt the user dismissed, how long before tokd shows another:
/// a script calling `tokctl get` in a loop must not bring up a dialog
/// each time.
pub const PROMPT_PAUSE: Duration = Duration::from_secs(60);
/// The attribute every tokd item carries.
pub const APPLICATION: &str = "tokd";

/// A client of the Secret Service.
#[derive(Debug)]
pub struct SecretService {
    connection: zbus::Connection,
    /// The `plain` session, opened at first use (it lives as long as the
    /// connection, or until the service restarts).
    session: tokio::sync::Mutex<Option<OwnedObjectPath>>,
    /// Held while an unlock prompt is shown: callers share one prompt.
    /// Holds when the last one left the keyring locked.
    prompting: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

impl SecretService {
    pub fn new(connection: zbus::Connection) -> Self {
        Self {
            connection,
            session: tokio::sync::Mutex::new(None),
            prompting: tokio::sync::Mutex::new(None),
        }
    }

    async fn service(&self) -> Result<ServiceProxy<'static>, KeyringError> {
        ServiceProxy::builder(&self.connection)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(classify)
    }

    /// Whether a Secret Service with a default collection answers (locked
    /// or not): the test for the default store.
    pub async fn present(&self) -> Result<(), KeyringError> {
        bounded(async { self.default_collection().await.map(|_| ()) }).await
    }

    /// Whether the default collection can be written now (present and
    /// unlocked).
    pub async fn ready(&self) -> Result<(), KeyringError> {
        bounded(async {
            let collection = self
                .collection_proxy(self.default_collection().await?)
                .await?;
            match collection.locked().await.map_err(classify)? {
                false => Ok(()),
                true => Err(KeyringError::Locked),
            }
        })
        .await
    }

    /// Every item tokd's tokens are kept in (see [`Keyring::read_all`]).
    pub async fn read_all(&self) -> Result<Vec<Kept>, KeyringError> {
        bounded(self.search_tokens(HashMap::from([("application", APPLICATION)]))).await
    }

    /// The items of one installation (see [`Keyring::read`]).
    pub async fn read_one(&self, name: &str) -> Result<Vec<Kept>, KeyringError> {
        bounded(async {
            let mut found = self
                .search_tokens(HashMap::from([
                    ("application", APPLICATION),
                    ("installation", name),
                ]))
                .await?;
            found.retain(|kept| kept.tokens.installation == name);
            Ok(found)
        })
        .await
    }

    /// Writes one installation's tokens, replacing its item; returns the
    /// item once the Secret Service has confirmed the write.
    pub async fn write(&self, consumer: &str, tokens: &Tokens) -> Result<String, KeyringError> {
        let written = bounded(async {
            let collection = self
                .collection_proxy(self.default_collection().await?)
                .await?;
            let name = tokens.installation.as_str();
            let attributes = HashMap::from([
                ("application", APPLICATION),
                ("installation", name),
                ("consumer", consumer),
            ]);
            let properties = HashMap::from([
                (
                    "org.freedesktop.Secret.Item.Label",
                    Variant::from(format!("tokd: {name} ({consumer})")),
                ),
                (
                    "org.freedesktop.Secret.Item.Attributes",
                    Variant::from(attributes),
                ),
            ]);
            let value = Zeroizing::new(
                serde_json::to_vec(tokens).map_err(|e| KeyringError::Failed(e.to_string()))?,
            );
            self.with_session(|session| {
                let secret: WireSecret = (
                    session,
                    Vec::new(),
                    value.to_vec(),
                    "application/json".to_owned(),
                );
                let (collection, properties) = (&collection, properties.clone());
                async move {
                    let (item, prompt) = collection
                        .create_item(properties, &secret, true)
                        .await
                        .map_err(classify)?;
                    // A prompt means the collection is locked: the item is
                    // not written until someone answers it.
                    if prompt.as_str() == "/" {
                        Ok(item)
                    } else {
                        Err(KeyringError::Locked)
                    }
                }
            })
            .await
        })
        .await?;
        // `replace` replaces an item with the very same attributes only:
        // one written under the consumer's old name (a renamed consumer
        // keeps its tokens) would stay beside the new one, with a refresh
        // token that rotation has killed. One item per installation.
        if let Err(error) = bounded(self.delete_items(&tokens.installation, Some(&written))).await {
            tracing::warn!(installation = %tokens.installation, %error, "cannot delete an older keyring item of this installation");
        }
        Ok(written.to_string())
    }

    /// Deletes one installation's item, if it has one.
    pub async fn delete(&self, name: &str) -> Result<(), KeyringError> {
        bounded(self.delete_items(name, None)).await
    }

    /// Deletes the items of installation `name`, but `keep`.
    async fn delete_items(
        &self,
        name: &str,
        keep: Option<&OwnedObjectPath>,
    ) -> Result<(), KeyringError> {
        let (unlocked, locked) = self
            .service()
            .await?
            .search_items(HashMap::from([
                ("application", APPLICATION),
                ("installation", name),
            ]))
            .await
            .map_err(classify)?;
        if !locked.is_empty() {
            return Err(KeyringError::Locked);
        }
        for path in unlocked.into_iter().filter(|path| Some(path) != keep) {
            let prompt = self.item(path).await?.delete().await.map_err(classify)?;
            if prompt.as_str() != "/" {
                return Err(KeyringError::Locked);
            }
        }
        Ok(())
    }

    async fn item(&self, path: OwnedObjectPath) -> Result<ItemProxy<'static>, KeyringError> {
        ItemProxy::builder(&self.connection)
            .path(path)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(classify)
    }

    /// Asks the Secret Service to unlock the default collection: it shows
    /// its own password dialog. Waits for the user at most
    /// [`UNLOCK_WAIT`]; concurrent callers share one prompt. Returns
    /// whether the collection is unlocked now.
    /// After a prompt that left it locked, no other is shown for
    /// [`PROMPT_PAUSE`].
    pub async fn unlock(&self) -> Result<bool, KeyringError> {
        let mut last_refused = self.prompting.lock().await;
        match self.ready().await {
            Ok(()) => return Ok(true),
            Err(KeyringError::Locked) => {}
            Err(other) => return Err(other),
        }
        if last_refused.is_some_and(|at| at.elapsed() < PROMPT_PAUSE) {
            return Ok(false);
        }
        let prompt = bounded(async {
            let collection = self.default_collection().await?;
            let (_, prompt) = self
                .service()
                .await?
                .unlock(&[collection.as_ref()])
                .await
                .map_err(classify)?;
            Ok(prompt)
        })
        .await?;
        if prompt.as_str() != "/" {
            tracing::info!("asked the desktop to unlock the keyring");
            let proxy = bounded(async {
                PromptProxy::builder(&self.connection)
                    .path(prompt)
                    .cache_properties(zbus::proxy::CacheProperties::No)
                    .build()
                    .await
                    .map_err(classify)
            })
            .await?;
            let mut completed =
                bounded(async { proxy.receive_completed().await.map_err(classify) }).await?;
            bounded(async { proxy.prompt("").await.map_err(classify) }).await?;
            use futures_util::StreamExt as _;
            // Dismissed, answered or not answered in time: the collection's
            // own state says which.
            let _ = tokio::time::timeout(UNLOCK_WAIT, completed.next()).await;
        }
        let unlocked = self.ready().await.is_ok();
        if !unlocked {
            tracing::info!(
                "the keyring is still locked: the unlock dialog was dismissed, not answered in time, or no desktop could show it; tokd asks again no sooner than in {}s",
                PROMPT_PAUSE.as_secs()
            );
        }
        *last_refused = (!unlocked).then(tokio::time::Instant::now);
        Ok(unlocked)
    }

    async fn default_collection(&self) -> Result<OwnedObjectPath, KeyringError> {
        let path = self
            .service()
            .await?
            .read_alias("default")
            .await
            .map_err(classify)?;
        if path.as_str() == "/" {
            return Err(KeyringError::Failed(
                "the Secret Service has no default keyring; create one or set one as the default (e.g. in Seahorse)"
                    .to_owned(),
            ));
        }
        Ok(path)
    }

    async fn collection_proxy(
        &self,
        path: OwnedObjectPath,
    ) -> Result<CollectionProxy<'static>, KeyringError> {
        CollectionProxy::builder(&self.connection)
            .path(path)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(classify)
    }

    /// The secrets of the items matching `attributes`, an installation's
    /// best first (see [`Keyring::read_all`]); a locked match is
    /// [`KeyringError::Locked`].
    async fn search_tokens(
        &self,
        attributes: HashMap<&str, &str>,
    ) -> Result<Vec<Kept>, KeyringError> {
        let service = self.service().await?;
        let (unlocked, locked) = service.search_items(attributes).await.map_err(classify)?;
        if !locked.is_empty() {
            return Err(KeyringError::Locked);
        }
        if unlocked.is_empty() {
            return Ok(Vec::new());
        }
        let items: Vec<zbus::ObjectPath<'_>> = unlocked.iter().map(|p| p.as_ref()).collect();
        let read = self
            .with_session(|session| {
                let (service, items) = (&service, &items);
                async move {
                    service
                        .get_secrets(items, &session.as_ref())
                        .await
                        .map_err(classify)
                }
            })
            .await?;
        let mut found: Vec<(OwnedObjectPath, Tokens)> = Vec::new();
        for (path, (_, _, value, _)) in read {
            let value = Zeroizing::new(value);
            // An item tokd cannot read (edited by hand) is skipped: its
            // installation then has no token, which `status` says.
            if let Ok(tokens) = serde_json::from_slice::<Tokens>(&value) {
                found.push((path, tokens));
            }
        }
        // Two items for one installation (an older tokd's, left by a
        // renamed consumer, a failed clean-up, or one planted by another
        // program): tokd's own kind first (exactly the attributes it
        // writes), then the newest, then the first by object path; never
        // whichever the service listed first. (`Storage` puts the item
        // tokd recorded before all of them.)
        let several = found.len()
            > found
                .iter()
                .map(|(_, tokens)| &tokens.installation)
                .collect::<std::collections::HashSet<_>>()
                .len();
        let mut ranked = Vec::with_capacity(found.len());
        for (path, tokens) in found {
            let rank = if several {
                self.rank(path.clone(), &tokens.installation).await
            } else {
                Rank::default()
            };
            ranked.push((rank, path, tokens));
        }
        ranked.sort_by(|(a, a_path, a_tokens), (b, b_path, b_tokens)| {
            a_tokens
                .installation
                .cmp(&b_tokens.installation)
                .then_with(|| b.cmp(a))
                .then_with(|| a_path.as_str().cmp(b_path.as_str()))
        });
        Ok(ranked
            .into_iter()
            .map(|(_, path, tokens)| Kept {
                item: path.to_string(),
                tokens,
            })
            .collect())
    }

    /// How much an item looks like tokd's own, for choosing among several
    /// for one installation.
    async fn rank(&self, path: OwnedObjectPath, installation: &str) -> Rank {
        let Ok(item) = self.item(path).await else {
            return Rank::default();
        };
        let attributes = item.attributes().await.unwrap_or_default();
        // The keyring may add its own (`xdg:schema`); tokd writes three.
        let mut names: Vec<&str> = attributes
            .keys()
            .map(String::as_str)
            .filter(|name| !name.starts_with("xdg:"))
            .collect();
        names.sort_unstable();
        // And it names, outside, the installation its secret names inside:
        // an item labelled for another installation is not this one's.
        let own = names == ["application", "consumer", "installation"]
            && attributes.get("application").map(String::as_str) == Some(APPLICATION)
            && attributes.get("installation").map(String::as_str) == Some(installation);
        Rank {
            own,
            modified: item.modified().await.unwrap_or(0),
        }
    }

    /// Runs `call` with the `plain` session, opening it first if needed,
    /// and once more with a new one if the service forgot it (restarted).
    async fn with_session<T, F, Fut>(&self, call: F) -> Result<T, KeyringError>
    where
        F: Fn(OwnedObjectPath) -> Fut,
        Fut: Future<Output = Result<T, KeyringError>>,
    {
        for attempt in 0..2 {
            let session = {
                let mut cached = self.session.lock().await;
                match cached.as_ref() {
                    Some(session) => session.clone(),
                    None => {
                        let (_, session) = self
                            .service()
                            .await?
                            .open_session("plain", &Variant::from(""))
                            .await
                            .map_err(classify)?;
                        *cached = Some(session.clone());
                        session
                    }
                }
            };
            match call(session).await {
                Err(KeyringError::Failed(message))
                    if attempt == 0 && message.contains("NoSession") =>
                {
                    *self.session.lock().await = None;
                }
                outcome => return outcome,
            }
        }
        Err(KeyringError::Failed("no session".to_owned()))
    }
}

/// `work`, or [`KeyringError::Failed`] when it takes longer than
/// [`CALL_TIMEOUT`].
/// An item's claim to be an installation's, best last: tokd's own kind
/// of item (exactly its attributes), then the most recently changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    own: bool,
    modified: u64,
}

async fn bounded<T>(
    work: impl Future<Output = Result<T, KeyringError>>,
) -> Result<T, KeyringError> {
    tokio::time::timeout(CALL_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| {
            Err(KeyringError::Failed(format!(
                "the keyring did not answer within {}s",
                CALL_TIMEOUT.as_secs()
            )))
        })
}

/// What a D-Bus error means for tokd.
fn classify(error: zbus::Error) -> KeyringError {
    let name = match &error {
        zbus::Error::MethodError(name, _, _) => name.as_str().to_owned(),
        zbus::Error::FDO(fdo) => {
            use zbus::DBusError as _;
            fdo.name().as_str().to_owned()
        }
        zbus::Error::InputOutput(_) => return KeyringError::Gone,
        _ => String::new(),
    };
    match name.as_str() {
        "org.freedesktop.DBus.Error.ServiceUnknown"
        | "org.freedesktop.DBus.Error.NameHasNoOwner"
        | "org.freedesktop.DBus.Error.NoReply"
        | "org.freedesktop.DBus.Error.Disconnected" => KeyringError::Gone,
        "org.freedesktop.Secret.Error.IsLocked" => KeyringError::Locked,
        _ => KeyringError::Failed(error.to_string()),
    }
}

impl Keyring for SecretService {
    fn present(&self) -> Pending<'_, ()> {
        Box::pin(SecretService::present(self))
    }

    fn ready(&self) -> Pending<'_, ()> {
        Box::pin(SecretService::ready(self))
    }

    fn unlock(&self) -> Pending<'_, bool> {
        Box::pin(SecretService::unlock(self))
    }

    fn read_all(&self) -> Pending<'_, Vec<Kept>> {
        Box::pin(SecretService::read_all(self))
    }

    fn read<'a>(&'a self, name: &'a str) -> Pending<'a, Vec<Kept>> {
        Box::pin(self.read_one(name))
    }

    fn write<'a>(&'a self, consumer: &'a str, tokens: &'a Tokens) -> Pending<'a, String> {
        Box::pin(SecretService::write(self, consumer, tokens))
    }

    fn delete<'a>(&'a self, name: &'a str) -> Pending<'a, ()> {
        Box::pin(SecretService::delete(self, name))
    }
}
