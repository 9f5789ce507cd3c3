//! Who may ask: each installation's caller policy ([`policy`]), who is
//! calling ([`identity`]), what the user allowed since (remembered in the
//! state folder, `callers/NAME.json`), and the record of who got which
//! installation's token ([`Gate::deliveries`], `tokctl log`).
//!
//! The bus layer identifies a caller and asks the [`Gate`] before it
//! hands out a token; the gate knows nothing of D-Bus. An `ask` goes to
//! an [`Asker`] (the desktop notification, `bus/notify.rs`).

pub mod identity;
pub mod policy;

pub use identity::Caller;
pub use policy::{Policy, Rule, Unknown, Verdict};

use crate::storage::Storage;
use crate::sync::lock;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;
use tracing::{info, warn};

/// The state folder's kind for remembered allowances.
const REMEMBERED: &str = "callers";
/// How many deliveries `tokctl log` can show (the journal has them all).
const DELIVERIES_KEPT: usize = 200;
/// How many callers may be allowed per installation beyond its config.
pub const MAX_ALLOWED: usize = 64;

/// A user's answer to an `ask`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Once,
    Always,
    Deny,
    /// Nobody could be asked (no notification server, or it does not
    /// show actions), or nobody answered in time: why, for the sentence.
    NoAnswer(&'static str),
}

/// Asks the user whether `caller` may get `name`'s tokens.
pub trait Asker: Send + Sync + std::fmt::Debug {
    fn ask<'a>(
        &'a self,
        name: &'a str,
        caller: &'a Caller,
    ) -> std::pin::Pin<Box<dyn Future<Output = Answer> + Send + 'a>>;
}

/// One token handed out.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub at: SystemTime,
    pub installation: String,
    /// How it went out: `GetToken`, `GetGitCredential`, ...
    pub how: &'static str,
    pub caller: String,
}

#[derive(Debug, Default, Serialize, Deserialize, Clone)]
struct Remembered {
    #[serde(default)]
    allowed: Vec<String>,
}

/// The policies in force, what was allowed since, and the deliveries.
#[derive(Debug)]
pub struct Gate {
    storage: Arc<Storage>,
    policies: RwLock<Arc<BTreeMap<String, Policy>>>,
    /// Read from the state folder on first use, per installation.
    remembered: Mutex<HashMap<String, Vec<Rule>>>,
    /// Serializes the read-change-write of remembered allowances.
    writing: tokio::sync::Mutex<()>,
    deliveries: Mutex<VecDeque<Delivery>>,
    /// Who asks the user (set once the desktop can be reached).
    asker: std::sync::OnceLock<Arc<dyn Asker>>,
}

impl Gate {
    pub fn new(storage: Arc<Storage>, policies: BTreeMap<String, Policy>) -> Self {
        Self {
            storage,
            policies: RwLock::new(Arc::new(policies)),
            remembered: Mutex::new(HashMap::new()),
            writing: tokio::sync::Mutex::new(()),
            deliveries: Mutex::new(VecDeque::new()),
            asker: std::sync::OnceLock::new(),
        }
    }

    /// Who asks the user about callers of `ask` installations; until it
    /// is set, nobody can be asked and they are refused.
    pub fn set_asker(&self, asker: Arc<dyn Asker>) {
        let _ = self.asker.set(asker);
    }

    /// The policies of a reloaded config.
    pub fn set_policies(&self, policies: BTreeMap<String, Policy>) {
        *crate::sync::write(&self.policies) = Arc::new(policies);
    }

    /// `name`'s policy, if it has one.
    pub fn policy(&self, name: &str) -> Option<Policy> {
        crate::sync::read(&self.policies).get(name).cloned()
    }

    /// Lets `caller` have `name`'s tokens, or says why not: the sentence
    /// names the command that allows it.
    pub async fn admit(&self, name: &str, caller: &Caller) -> Result<(), String> {
        let Some(policy) = self.policy(name) else {
            return Ok(());
        };
        let remembered = self.remembered(name).await;
        match policy.judge(caller, &remembered) {
            Verdict::Allowed => Ok(()),
            Verdict::Denied => {
                warn!(installation = name, %caller, "refused a caller its policy does not name");
                Err(policy::refusal(name, caller))
            }
            // Nobody is asked about a caller tokd cannot name: the answer
            // would go to whoever it is.
            Verdict::Ask if caller.unknown() => Err(policy::refusal(name, caller)),
            Verdict::Ask => match self.ask(name, caller).await {
                Answer::Once => Ok(()),
                Answer::Always => {
                    if let Some(rule) = Rule::proposed_for(caller)
                        && let Err(error) = self.allow(name, rule).await
                    {
                        warn!(installation = name, %error, "cannot remember an allowed caller; allowed once");
                    }
                    Ok(())
                }
                Answer::Deny => {
                    warn!(installation = name, %caller, "the user refused a caller");
                    Err(policy::refusal(name, caller))
                }
                Answer::NoAnswer(why) => {
                    warn!(installation = name, %caller, why, "refused a caller: nobody could be asked");
                    Err(format!(
                        "{} (tokd could not ask: {why})",
                        policy::refusal(name, caller)
                    ))
                }
            },
        }
    }

    async fn ask(&self, name: &str, caller: &Caller) -> Answer {
        match self.asker.get() {
            Some(asker) => asker.ask(name, caller).await,
            None => Answer::NoAnswer("tokd is not on a session bus"),
        }
    }

    /// The rules allowed since for `name` (`tokctl allow`, "Always").
    pub async fn remembered(&self, name: &str) -> Vec<Rule> {
        if let Some(rules) = lock(&self.remembered).get(name) {
            return rules.clone();
        }
        let document: Remembered = self
            .storage
            .load_document(REMEMBERED, name)
            .await
            .unwrap_or_default();
        let rules: Vec<Rule> = document
            .allowed
            .iter()
            .filter_map(|text| text.parse().ok())
            .collect();
        lock(&self.remembered).insert(name.to_owned(), rules.clone());
        rules
    }

    /// Remembers that `rule` may get `name`'s tokens.
    pub async fn allow(&self, name: &str, rule: Rule) -> Result<bool, String> {
        let mut full = false;
        let added = self
            .change(name, |rules| {
                if rules.contains(&rule) {
                    false
                } else if rules.len() >= MAX_ALLOWED {
                    full = true;
                    false
                } else {
                    rules.push(rule.clone());
                    true
                }
            })
            .await?;
        if full {
            return Err(format!(
                "`{name}` has {MAX_ALLOWED} allowed callers already, the most it keeps; take one back first (`tokctl callers {name}` lists them)"
            ));
        }
        if added {
            info!(installation = name, caller = %rule, "a caller was allowed");
        }
        Ok(added)
    }

    /// Forgets an allowance; `false` if there was none.
    pub async fn forget(&self, name: &str, rule: &Rule) -> Result<bool, String> {
        let removed = self
            .change(name, |rules| {
                let before = rules.len();
                rules.retain(|kept| kept != rule);
                rules.len() != before
            })
            .await?;
        if removed {
            info!(installation = name, caller = %rule, "a caller was taken back");
        }
        Ok(removed)
    }

    async fn change(
        &self,
        name: &str,
        edit: impl FnOnce(&mut Vec<Rule>) -> bool,
    ) -> Result<bool, String> {
        let _writing = self.writing.lock().await;
        let mut rules = self.remembered(name).await;
        if !edit(&mut rules) {
            return Ok(false);
        }
        let document = Remembered {
            allowed: rules.iter().map(ToString::to_string).collect(),
        };
        self.storage
            .save_document(REMEMBERED, name, &document)
            .await
            .map_err(|error| crate::text::error_chain(&error))?;
        lock(&self.remembered).insert(name.to_owned(), rules);
        Ok(true)
    }

    /// Records that `caller` got `name`'s token through `how`; the journal
    /// gets a line too. Never the token.
    pub fn delivered(&self, name: &str, how: &'static str, caller: &Caller) {
        // At info (the journal keeps it) for an installation with a
        // policy; at debug for the others, which a script may ask every
        // second. `tokctl log` has both.
        if crate::sync::read(&self.policies).contains_key(name) {
            info!(installation = name, how, %caller, "token handed out");
        } else {
            tracing::debug!(installation = name, how, %caller, "token handed out");
        }
        let mut deliveries = lock(&self.deliveries);
        if deliveries.len() >= DELIVERIES_KEPT {
            deliveries.pop_front();
        }
        deliveries.push_back(Delivery {
            at: SystemTime::now(),
            installation: name.to_owned(),
            how,
            caller: caller.to_string(),
        });
    }

    /// The last deliveries, oldest first.
    pub fn deliveries(&self) -> Vec<Delivery> {
        lock(&self.deliveries).iter().cloned().collect()
    }
}
