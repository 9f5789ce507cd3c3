//! Where each consumer's requests go. A consumer with an `issuer` has its
//! endpoints discovered at first use (not at start: a tokd with a dozen
//! issuers starts without the network), kept in the state folder so that a
//! restart works offline, and discovered again when a request fails as a
//! moved endpoint would (404, 410, nothing listening), after which the
//! request is made once more if the endpoints changed.

use crate::config::Consumer;
use crate::oauth::{Discovery, Endpoints, ErrorKind, OAuthClient, OAuthError, check_discovery};
use crate::storage::Storage;
use crate::sync::lock;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tracing::{info, warn};

/// Where discovered documents are kept, under the state folder.
const DISCOVERY: &str = "discovery";

/// Each consumer's endpoints, once resolved.
#[derive(Debug)]
pub struct Resolver {
    known: Mutex<HashMap<String, Arc<Endpoints>>>,
    http: OAuthClient,
    storage: Arc<Storage>,
}

impl Resolver {
    pub(super) fn new(http: OAuthClient, storage: Arc<Storage>) -> Self {
        Self {
            known: Mutex::default(),
            http,
            storage,
        }
    }

    /// `consumer`'s endpoints.
    pub(super) async fn endpoints(
        &self,
        consumer: &Consumer,
    ) -> Result<Arc<Endpoints>, OAuthError> {
        if let Some(known) = lock(&self.known).get(&*consumer.name) {
            return Ok(known.clone());
        }
        let resolved = match &consumer.issuer {
            None => Endpoints::of(consumer, None)?,
            Some(issuer) => {
                let kept: Option<Discovery> = self
                    .storage
                    .load_document(DISCOVERY, &consumer.name)
                    .await
                    .filter(|document: &Discovery| same_issuer(&document.issuer, issuer))
                    .and_then(|document| {
                        // Checked as a fetched one is: the file may have
                        // been edited since it was kept.
                        let kept_in = format!("kept for consumer `{}`", consumer.name);
                        check_discovery(issuer, &kept_in, document)
                            .inspect_err(|error| {
                                warn!(consumer = %consumer.name, %error, "the kept discovery document is refused; discovering again");
                            })
                            .ok()
                    });
                let document = match kept {
                    Some(document) => document,
                    None => self.discover(consumer).await?,
                };
                Endpoints::of(consumer, Some(&document))?
            }
        };
        let resolved = Arc::new(resolved);
        lock(&self.known).insert(consumer.name.to_string(), resolved.clone());
        Ok(resolved)
    }

    /// Fetches `consumer`'s document, keeps it, and says so.
    async fn discover(&self, consumer: &Consumer) -> Result<Discovery, OAuthError> {
        let Some(issuer) = &consumer.issuer else {
            return Err(OAuthError::new(
                ErrorKind::Misconfigured,
                format!("consumer `{}` has no issuer", consumer.name),
            ));
        };
        let document = self.http.discover(issuer).await.map_err(|mut error| {
            error.message = format!(
                "cannot discover the endpoints of consumer `{}` from {issuer}: {}",
                consumer.name, error.message
            );
            error
        })?;
        let saved = self
            .storage
            .save_document(DISCOVERY, &consumer.name, &document)
            .await;
        if saved.is_err() {
            warn!(consumer = %consumer.name, "cannot keep the discovered endpoints; they are discovered again after a restart");
        }
        info!(consumer = %consumer.name, %issuer, token = %document.token_endpoint, "endpoints discovered");
        Ok(document)
    }

    /// Runs `call` against `consumer`'s endpoints; when it fails as a
    /// moved endpoint would and the endpoints are discovered, discovers
    /// them again and, if they changed, runs `call` once more. Safe for
    /// every request: such a failure means the provider never saw it.
    pub(super) async fn with_endpoints<T, F, Fut>(
        &self,
        consumer: &Consumer,
        call: F,
    ) -> Result<T, OAuthError>
    where
        F: Fn(Arc<Endpoints>) -> Fut,
        Fut: Future<Output = Result<T, OAuthError>>,
    {
        let endpoints = self.endpoints(consumer).await?;
        let result = call(endpoints.clone()).await;
        let moved = |error: &OAuthError| {
            matches!(error.status, Some(404 | 410))
                || (error.status.is_none()
                    && !error.outcome_unknown
                    && error.kind == ErrorKind::Transient)
        };
        match result {
            Err(error) if consumer.issuer.is_some() && moved(&error) => {
                let Ok(document) = self.discover(consumer).await else {
                    return Err(error);
                };
                let Ok(fresh) = Endpoints::of(consumer, Some(&document)) else {
                    return Err(error);
                };
                let fresh = Arc::new(fresh);
                lock(&self.known).insert(consumer.name.to_string(), fresh.clone());
                if *fresh == *endpoints {
                    return Err(error);
                }
                info!(consumer = %consumer.name, "the provider's endpoints moved; asking again there");
                call(fresh).await
            }
            other => other,
        }
    }

    /// Forgets every consumer's endpoints (the config changed).
    pub(super) fn forget(&self) {
        lock(&self.known).clear();
    }
}

fn same_issuer(a: &url::Url, b: &url::Url) -> bool {
    a.as_str().trim_end_matches('/') == b.as_str().trim_end_matches('/')
}
