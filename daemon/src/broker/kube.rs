//! Tokens for kubectl: what `tokctl kube-credential` asks for. A token goes
//! only to an API server the installation's `kube_servers` names, compared
//! with the `server` kubectl says it is for (its `provideClusterInfo`): a
//! kubeconfig the user did not write, naming tokctl and an installation,
//! must not get that installation's token sent to its own server.

use super::{Broker, Error, Token};
use crate::config;
use crate::sync::read;
use std::time::Duration;

impl Broker {
    /// A token of `name` for the Kubernetes API at `server`, valid for at
    /// least `min_valid`; refused unless `name`'s `kube_servers` names
    /// `server`.
    pub async fn kube_credential(
        &self,
        name: &str,
        server: &str,
        min_valid: Duration,
    ) -> Result<Token, Error> {
        self.installations.get(name)?;
        let Some(server) = config::kube_server(server) else {
            return Err(Error::InvalidArgument(format!(
                "not sending a token of `{name}` to the API server {server:?}: tokens go to https servers only, named without a user part"
            )));
        };
        let named = read(&self.kube_servers)
            .iter()
            .any(|(known, installation)| *known == server && installation == name);
        if !named {
            return Err(Error::InvalidArgument(format!(
                "`{name}` gives its tokens to the API servers its `kube_servers` names, and {server} is not one; if that is your cluster, add \"{server}\" to `kube_servers` in [installations.{name}] and run `tokctl reload`"
            )));
        }
        self.get_token(name, min_valid).await
    }
}
