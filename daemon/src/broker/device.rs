//! Logins by the device authorization grant (RFC 8628), for machines
//! without a browser: tokd asks the provider for a code, the user enters
//! it on any device, and tokd polls the token endpoint until they have.
//!
//! The polling is tokd's, not tokctl's: a `tokctl login --device` that is
//! interrupted leaves it running, and it ends with the code's expiry, a
//! refusal, a newer login of the same installation, or tokd's stop. Each
//! poll holds the installation's `flight` lock, so the tokens it brings
//! are accepted like any refresh's (durably first). The interval is the
//! provider's (5 s when it names none), 5 s longer after each
//! `slow_down`.

use super::decision::Want;
use super::login::LoginDesk;
use super::slots::Slot;
use super::{Error, Event};
use crate::config::Grant;
use crate::oauth::{DeviceAuthorization, ErrorKind, OAuthError};
use crate::secret::DeviceCode;
use crate::sync::lock;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use url::Url;

/// Added to the interval after each `slow_down` (RFC 8628 §3.5).
const SLOW_DOWN: Duration = Duration::from_secs(5);

/// What a device login shows the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceLogin {
    /// Where to go.
    pub verification_uri: Url,
    /// The same with the code filled in, when the provider gives one.
    pub verification_uri_complete: Option<Url>,
    /// What to type there.
    pub user_code: String,
    /// When the code stops working.
    pub expires_at: SystemTime,
}

/// A device login being polled: stopped by a newer one.
#[derive(Debug)]
pub(super) struct Polling {
    id: u64,
    stop: CancellationToken,
}

static NEXT_POLLING: AtomicU64 = AtomicU64::new(0);

/// What one poll found.
enum Poll {
    Done,
    Pending,
    SlowDown,
    Ended(String),
}

impl LoginDesk {
    /// Starts a device login of `name`: asks the provider for a code and
    /// polls for the user's approval in the background. The outcome comes
    /// as `LoginFinished`.
    pub async fn begin_device_login(&self, name: &str) -> Result<DeviceLogin, Error> {
        self.installations.refuse_if_stopping()?;
        let slot = self.installations.get(name)?;
        let spec = slot.spec();
        if spec.grant() != Grant::AuthorizationCode {
            return Err(Error::InvalidArgument(format!(
                "`{name}` uses client credentials and needs no login; `tokctl refresh {name}` requests a new token"
            )));
        }
        self.keyring_ready(&slot).await?;
        let (http, consumer) = (&self.http, &spec.consumer);
        let scopes = spec.scopes();
        let scopes = &scopes;
        let authorization = self
            .resolver
            .with_endpoints(consumer, |endpoints| async move {
                http.device_authorization(consumer, &endpoints, scopes)
                    .await
            })
            .await
            .map_err(|error| {
                let message = format!("cannot start a device login of `{name}`: {}", error.message);
                warn!(installation = %name, error = %error.message, "the device login could not start");
                if error.kind == ErrorKind::Misconfigured && error.status.is_none() {
                    // No device endpoint: a usage question, not a fault.
                    Error::InvalidArgument(message)
                } else {
                    Error::of_kind(error.kind, message)
                }
            })?;
        let DeviceAuthorization {
            device_code,
            user_code,
            verification_uri,
            verification_uri_complete,
            expires_in,
            interval,
        } = authorization;
        let expires_at = self.installations.clock.now() + expires_in;
        let polling = Polling {
            id: NEXT_POLLING.fetch_add(1, Ordering::Relaxed),
            stop: CancellationToken::new(),
        };
        let (id, stop) = (polling.id, polling.stop.clone());
        if let Some(older) = lock(&self.device).insert(name.to_owned(), polling) {
            older.stop.cancel();
        }
        let desk = self.arc();
        let deadline = tokio::time::Instant::now() + expires_in;
        self.installations.tasks.spawn_until_stopped(async move {
            tokio::select! {
                () = stop.cancelled() => debug!("a device login was replaced by a newer one"),
                () = desk.poll_device(&slot, &device_code, interval, deadline) => {}
            }
            let mut polling = lock(&desk.device);
            if polling.get(&*slot.name).is_some_and(|p| p.id == id) {
                polling.remove(&*slot.name);
            }
        });
        info!(installation = %name, expires_in = expires_in.as_secs(), "device login started");
        Ok(DeviceLogin {
            verification_uri,
            verification_uri_complete,
            user_code,
            expires_at,
        })
    }

    /// Polls until the user approves, refuses, or the code expires.
    async fn poll_device(
        &self,
        slot: &Arc<Slot>,
        device_code: &DeviceCode,
        mut interval: Duration,
        deadline: tokio::time::Instant,
    ) {
        let name = slot.name.to_string();
        let outcome = loop {
            tokio::time::sleep(interval).await;
            if tokio::time::Instant::now() >= deadline {
                break Err(format!(
                    "the device code of `{name}` expired before it was entered; run `tokctl login {name} --device` again"
                ));
            }
            let Ok(guard) = self.installations.flight(slot).await else {
                return;
            };
            let (desk, polled, code) = (self.arc(), slot.clone(), device_code.clone());
            let poll = self
                .refresher
                .in_flight(guard, "device login", async move {
                    Ok(desk.poll_once(&polled, &code).await)
                })
                .await;
            match poll {
                Ok(Poll::Done) => break Ok(()),
                Ok(Poll::Pending) => {}
                Ok(Poll::SlowDown) => interval += SLOW_DOWN,
                Ok(Poll::Ended(message)) => break Err(message),
                Err(_) => return,
            }
        };
        let (success, message) = match outcome {
            Ok(()) => {
                info!(installation = %name, "device login finished");
                (true, format!("logged in: `{name}` holds a fresh token"))
            }
            Err(message) => {
                warn!(installation = %name, %message, "device login ended");
                (false, message)
            }
        };
        self.installations.emit(Event::LoginFinished {
            name,
            success,
            message,
        });
    }

    /// One request to the token endpoint; the caller holds `flight`.
    async fn poll_once(&self, slot: &Slot, device_code: &DeviceCode) -> Poll {
        let spec = slot.spec();
        let name = &slot.name;
        let (http, consumer) = (&self.http, &spec.consumer);
        let result = self
            .resolver
            .with_endpoints(consumer, |endpoints| async move {
                http.device_token(consumer, &endpoints, device_code).await
            })
            .await;
        match result {
            Ok(response) => {
                let _ = self
                    .refresher
                    .keep_answer(slot, &spec, response, Want::Refresh)
                    .await;
                Poll::Done
            }
            Err(error) => poll_failure(name, &error),
        }
    }
}

/// What a failed poll means (RFC 8628 §3.5).
fn poll_failure(name: &str, error: &OAuthError) -> Poll {
    match error.error.as_deref() {
        Some("authorization_pending") => Poll::Pending,
        Some("slow_down") => Poll::SlowDown,
        Some("access_denied") => Poll::Ended(format!(
            "the login of `{name}` was refused at the provider (access_denied); run `tokctl login {name} --device` again"
        )),
        Some("expired_token") => Poll::Ended(format!(
            "the device code of `{name}` expired before it was entered; run `tokctl login {name} --device` again"
        )),
        // The network or the provider failing: the code is still good.
        _ if error.kind == ErrorKind::Transient => Poll::Pending,
        _ => Poll::Ended(format!(
            "the provider refused the device login of `{name}` ({}); run `tokctl login {name} --device` again",
            error.message
        )),
    }
}
