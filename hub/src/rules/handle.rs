//! The API's handle on the rules: list them (the configuration's and the API's), add or replace
//! one, delete one. Rules added here are kept in the store; the rules task is told to read the
//! rules again after each change.
//!
//! Invariants: a rule is saved only if it compiles; a configuration rule's name cannot be taken
//! or deleted through the API; at most [`MAX_RULES`] rules in all; changes are serialised.

use tokio::sync::{Mutex, watch};

use super::rule::{MAX_RULES, Origin, compile};
use crate::config::RuleConfig;
use crate::store::{Store, StoreError};

/// Why a change of the rules was refused.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// The rule is not valid: every problem, with its key.
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
    /// It names a rule of the configuration file.
    #[error("rule {0:?} comes from the configuration file; change it there")]
    FromConfig(String),
    /// No such rule.
    #[error("no rule {0:?}")]
    NotFound(String),
    /// The limit is reached.
    #[error("at most {MAX_RULES} rules")]
    TooMany,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A rule as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    /// Where it comes from.
    pub origin: Origin,
    /// Its definition.
    pub config: RuleConfig,
}

/// The API's handle. Cheap to clone.
#[derive(Clone)]
pub struct RulesHandle {
    store: Store,
    config_rx: watch::Receiver<Vec<RuleConfig>>,
    changed_tx: std::sync::Arc<watch::Sender<u64>>,
    changing: std::sync::Arc<Mutex<()>>,
}

impl RulesHandle {
    /// A handle over the store's rules and the configuration's (`config_rx`); `changed_tx` tells
    /// the rules task.
    pub fn new(
        store: Store,
        config_rx: watch::Receiver<Vec<RuleConfig>>,
        changed_tx: watch::Sender<u64>,
    ) -> Self {
        RulesHandle {
            store,
            config_rx,
            changed_tx: std::sync::Arc::new(changed_tx),
            changing: std::sync::Arc::new(Mutex::new(())),
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, RuleError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store))
            .await
            .map_err(|_| RuleError::Store(StoreError::Poisoned))?
            .map_err(RuleError::Store)
    }

    /// Every rule: the configuration's first, then the API's by name. An API rule whose name the
    /// configuration took since is not listed (nor evaluated).
    pub async fn list(&self) -> Result<Vec<Listed>, RuleError> {
        let config = self.config_rx.borrow().clone();
        let saved = self.blocking(|s| s.saved_rules()).await?;
        let mut rules: Vec<Listed> = config
            .into_iter()
            .map(|config| Listed {
                origin: Origin::Config,
                config,
            })
            .collect();
        for (name, definition) in saved {
            if rules.iter().any(|r| r.config.name == name) {
                continue;
            }
            if let Ok(config) = serde_json::from_str::<RuleConfig>(&definition) {
                rules.push(Listed {
                    origin: Origin::Api,
                    config,
                });
            }
        }
        Ok(rules)
    }

    /// Adds `config`, or replaces the API rule of its name; whether it is new.
    pub async fn put(&self, config: RuleConfig) -> Result<bool, RuleError> {
        compile(&config, Origin::Api).map_err(RuleError::Invalid)?;
        let _changing = self.changing.lock().await;
        let name = config.name.clone();
        if self.config_rx.borrow().iter().any(|r| r.name == name) {
            return Err(RuleError::FromConfig(name));
        }
        let listed = self.list().await?;
        let new = !listed.iter().any(|r| r.config.name == name);
        if new && listed.len() >= MAX_RULES {
            return Err(RuleError::TooMany);
        }
        let definition =
            serde_json::to_string(&config).map_err(|e| RuleError::Invalid(vec![e.to_string()]))?;
        self.blocking(move |s| s.save_rule(&name, &definition))
            .await?;
        self.changed_tx.send_modify(|n| *n += 1);
        Ok(new)
    }

    /// Deletes the API rule `name`.
    pub async fn delete(&self, name: &str) -> Result<(), RuleError> {
        let _changing = self.changing.lock().await;
        if self.config_rx.borrow().iter().any(|r| r.name == name) {
            return Err(RuleError::FromConfig(name.to_owned()));
        }
        let owned = name.to_owned();
        if !self.blocking(move |s| s.delete_rule(&owned)).await? {
            return Err(RuleError::NotFound(name.to_owned()));
        }
        self.changed_tx.send_modify(|n| *n += 1);
        Ok(())
    }

    /// The store (for the alerts' reads).
    pub fn store(&self) -> &Store {
        &self.store
    }
}
