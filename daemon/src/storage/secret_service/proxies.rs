//! The parts of the Secret Service API (org.freedesktop.Secret.*) tokd
//! uses, as zbus proxies on the connection tokd already has.

use std::collections::HashMap;
use zbus::{OwnedObjectPath, OwnedVariant, Variant};

/// A secret on the wire: `(session, parameters, value, content type)`.
pub type WireSecret = (OwnedObjectPath, Vec<u8>, Vec<u8>, String);

#[zbus::proxy(
    interface = "org.freedesktop.Secret.Service",
    default_service = "org.freedesktop.secrets",
    default_path = "/org/freedesktop/secrets"
)]
pub trait Service {
    fn open_session(
        &self,
        algorithm: &str,
        input: &Variant<'_>,
    ) -> zbus::Result<(OwnedVariant, OwnedObjectPath)>;

    fn search_items(
        &self,
        attributes: HashMap<&str, &str>,
    ) -> zbus::Result<(Vec<OwnedObjectPath>, Vec<OwnedObjectPath>)>;

    fn unlock(
        &self,
        objects: &[zbus::ObjectPath<'_>],
    ) -> zbus::Result<(Vec<OwnedObjectPath>, OwnedObjectPath)>;

    fn get_secrets(
        &self,
        items: &[zbus::ObjectPath<'_>],
        session: &zbus::ObjectPath<'_>,
    ) -> zbus::Result<HashMap<OwnedObjectPath, WireSecret>>;

    fn read_alias(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
}

#[zbus::proxy(
    interface = "org.freedesktop.Secret.Collection",
    default_service = "org.freedesktop.secrets"
)]
pub trait Collection {
    fn create_item(
        &self,
        properties: HashMap<&str, Variant<'_>>,
        secret: &WireSecret,
        replace: bool,
    ) -> zbus::Result<(OwnedObjectPath, OwnedObjectPath)>;

    #[zbus(property)]
    fn locked(&self) -> zbus::Result<bool>;
}

#[zbus::proxy(
    interface = "org.freedesktop.Secret.Item",
    default_service = "org.freedesktop.secrets"
)]
pub trait Item {
    fn delete(&self) -> zbus::Result<OwnedObjectPath>;

    /// When the item was last changed, in Unix seconds.
    #[zbus(property)]
    fn modified(&self) -> zbus::Result<u64>;

    /// Its lookup attributes.
    #[zbus(property)]
    fn attributes(&self) -> zbus::Result<HashMap<String, String>>;
}

#[zbus::proxy(
    interface = "org.freedesktop.Secret.Prompt",
    default_service = "org.freedesktop.secrets"
)]
pub trait Prompt {
    fn prompt(&self, window_id: &str) -> zbus::Result<()>;

    #[zbus(signal)]
    fn completed(&self, dismissed: bool, result: OwnedVariant) -> zbus::Result<()>;
}
