//! `unknown_callers = "ask"`: a desktop notification asks the user
//! whether a caller may get an installation's tokens ("Allow once",
//! "Always allow", "Deny"), and the call waits for the answer.
//!
//! One question at a time per installation and caller: calls that come
//! while it is shown wait for the same answer. Without a notification
//! server, one without actions, `[daemon] notify = false`, or no answer
//! within [`ANSWER_TIMEOUT`], the caller is refused (the sentence says
//! why and names `tokctl allow`).

use super::notify::NotificationsProxy;
use crate::broker::Broker;
use crate::callers::{Answer, Asker, Caller, Rule};
use crate::sync::lock;
use futures_util::StreamExt as _;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tracing::{info, warn};
use zbus::Variant as Value;

/// How long a question waits for the user: less than tokctl's own
/// default wait (60 s), so that tokctl shows the refusal rather than a
/// timeout. A D-Bus client may give up sooner (libdbus and GDBus wait
/// 25 s by default); an "Always" given after that still counts for the
/// next call.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(45);
/// How many questions about one installation may be shown at once: one
/// program cannot fill the screen with them.
const QUESTIONS_AT_ONCE: usize = 3;
/// How long one call to the notification server may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

type Pending = Arc<tokio::sync::OnceCell<Answer>>;

/// The asker tokd gives its caller gate.
#[derive(Debug)]
pub struct Ask {
    connection: zbus::Connection,
    broker: Weak<Broker>,
    pending: Mutex<HashMap<(String, String), Pending>>,
}

impl Ask {
    pub fn new(connection: zbus::Connection, broker: &Arc<Broker>) -> Self {
        Self {
            connection,
            broker: Arc::downgrade(broker),
            pending: Mutex::new(HashMap::new()),
        }
    }

    async fn answer(&self, name: &str, caller: &Caller) -> Answer {
        if !self
            .broker
            .upgrade()
            .is_some_and(|broker| broker.notifications_on())
        {
            return Answer::NoAnswer("notifications are off in the config");
        }
        // One question per process: another process that matches the
        // same rule does not get this one's answer.
        let key = (
            name.to_owned(),
            caller
                .pid
                .map_or_else(|| caller.to_string(), |pid| pid.to_string()),
        );
        let pending = {
            let mut all = lock(&self.pending);
            let asking = all
                .keys()
                .filter(|(installation, _)| installation == name)
                .count();
            if !all.contains_key(&key) && asking >= QUESTIONS_AT_ONCE {
                return Answer::NoAnswer(
                    "it is already asking about other callers of this installation",
                );
            }
            all.entry(key.clone()).or_default().clone()
        };
        let answer = *pending
            .get_or_init(|| async {
                // Each call to the server is bounded, and so is the wait
                // for a click (`question`).
                self.question(name, caller).await
            })
            .await;
        // The next call asks again (unless "Always" was remembered).
        let mut all = lock(&self.pending);
        if all
            .get(&key)
            .is_some_and(|kept| Arc::ptr_eq(kept, &pending))
        {
            all.remove(&key);
        }
        answer
    }

    async fn question(&self, name: &str, caller: &Caller) -> Answer {
        let proxy = match NotificationsProxy::builder(&self.connection)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
        {
            Ok(proxy) => proxy,
            Err(error) => {
                warn!(%error, "cannot reach the notification server");
                return Answer::NoAnswer("no desktop notification server answered");
            }
        };
        let capabilities = match tokio::time::timeout(CALL_TIMEOUT, proxy.get_capabilities()).await
        {
            Ok(Ok(capabilities)) => capabilities,
            _ => return Answer::NoAnswer("no desktop notification server answered"),
        };
        if !capabilities.iter().any(|c| c == "actions") {
            return Answer::NoAnswer("the notification server shows no buttons");
        }
        // Listening before showing: a click cannot come first.
        let Ok(mut clicks) = proxy.receive_action_invoked().await else {
            return Answer::NoAnswer("no desktop notification server answered");
        };
        let always = Rule::proposed_for(caller);
        let body = match &always {
            Some(rule) => format!(
                "{caller} asks for the access token of {name}. \"Always allow\" lets {rule} in from now on (tokctl disallow takes that back)."
            ),
            None => format!(
                "{caller} asks for the access token of {name}. tokd cannot tell it from other programs of yours, so it can only be allowed once."
            ),
        };
        let body = if capabilities.iter().any(|c| c == "body-markup") {
            super::notify::escape_markup(&body)
        } else {
            body
        };
        let shown = tokio::time::timeout(
            CALL_TIMEOUT,
            proxy.notify(
                "tokd",
                0,
                "dialog-password",
                &format!("A program wants the token of {name}"),
                &body,
                if always.is_some() {
                    &[
                        "once",
                        "Allow once",
                        "always",
                        "Always allow",
                        "deny",
                        "Deny",
                    ]
                } else {
                    &["once", "Allow once", "deny", "Deny"]
                },
                HashMap::from([("urgency", Value::U8(2))]),
                0,
            ),
        )
        .await;
        let Ok(Ok(id)) = shown else {
            return Answer::NoAnswer("no desktop notification server answered");
        };
        info!(installation = name, %caller, id, "asked the user about a caller");
        let answered = tokio::time::timeout(ANSWER_TIMEOUT, async {
            while let Some(click) = clicks.next().await {
                let Ok(args) = click.args() else { continue };
                if args.id != id {
                    continue;
                }
                // A click on the notification itself ("default") is not
                // an answer: only its buttons are.
                match args.action_key.as_str() {
                    "once" => return Answer::Once,
                    "always" if always.is_some() => return Answer::Always,
                    "deny" => return Answer::Deny,
                    _ => {}
                }
            }
            Answer::NoAnswer("the notification server went away")
        })
        .await
        .unwrap_or(Answer::NoAnswer("nobody answered its notification in time"));
        // Withdrawn however it ended: its buttons answer nothing now.
        let _ = tokio::time::timeout(CALL_TIMEOUT, proxy.close_notification(id)).await;
        info!(installation = name, %caller, answer = ?answered, "a question about a caller ended");
        answered
    }
}

impl Asker for Ask {
    fn ask<'a>(
        &'a self,
        name: &'a str,
        caller: &'a Caller,
    ) -> Pin<Box<dyn Future<Output = Answer> + Send + 'a>> {
        Box::pin(self.answer(name, caller))
    }
}
