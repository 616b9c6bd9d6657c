//! What the rules count, for `/metrics`: rules, firing alerts, transitions, actions by kind and
//! outcome, the webhook outbox, expressions that failed. Labels stay few (kinds, outcomes), never
//! a rule or device name.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::actions::ActionStats;
use super::webhook::WebhookStats;
use crate::exposition::{Collect, CollectError, Exposition};
use crate::store::Store;

/// The rules' counters.
pub struct RulesStats {
    /// Rules evaluated now.
    pub rules: AtomicU64,
    /// Alerts firing now.
    pub firing: AtomicU64,
    /// Transitions to firing.
    pub fired: AtomicU64,
    /// Transitions to resolved.
    pub resolved: AtomicU64,
    /// Expressions that could not be evaluated.
    pub expr_errors: AtomicU64,
    /// Alerts not made because the bound was reached.
    pub refused: AtomicU64,
    /// Readings read back from the store after the broadcast lagged.
    pub caught_up: AtomicU64,
    /// What the actions did.
    pub actions: Arc<ActionStats>,
    /// What the webhook sender did.
    pub webhooks: Arc<WebhookStats>,
    /// The store, for the outbox's length.
    pub store: Store,
}

impl RulesStats {
    /// Zeroed counters.
    pub fn new(store: Store) -> Self {
        RulesStats {
            rules: AtomicU64::new(0),
            firing: AtomicU64::new(0),
            fired: AtomicU64::new(0),
            resolved: AtomicU64::new(0),
            expr_errors: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            caught_up: AtomicU64::new(0),
            actions: Arc::default(),
            webhooks: Arc::default(),
            store,
        }
    }
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Collect for RulesStats {
    fn collect(&self, out: &mut Exposition) -> Result<(), CollectError> {
        out.single(
            "hub_rules",
            "gauge",
            "Rules evaluated now.",
            get(&self.rules),
        );
        out.single(
            "hub_alerts_firing",
            "gauge",
            "Alerts firing now.",
            get(&self.firing),
        );
        out.family(
            "hub_alert_transitions_total",
            "counter",
            "Alert transitions notified, by the state entered.",
        );
        out.sample(
            "hub_alert_transitions_total",
            "state=\"firing\"",
            get(&self.fired),
        );
        out.sample(
            "hub_alert_transitions_total",
            "state=\"resolved\"",
            get(&self.resolved),
        );
        let a = &self.actions;
        out.family(
            "hub_alert_actions_total",
            "counter",
            "Alert actions, by kind and outcome (webhook: queued in the outbox, or dropped from a full one).",
        );
        for (kind, [ok, failed]) in [
            ("command", &a.command),
            ("mqtt", &a.mqtt),
            ("webhook", &a.webhook),
        ] {
            let (good, bad) = if kind == "webhook" {
                ("queued", "dropped")
            } else {
                ("done", "failed")
            };
            out.sample(
                "hub_alert_actions_total",
                &format!("action=\"{kind}\",outcome=\"{good}\""),
                get(ok),
            );
            out.sample(
                "hub_alert_actions_total",
                &format!("action=\"{kind}\",outcome=\"{bad}\""),
                get(failed),
            );
        }
        out.sample(
            "hub_alert_actions_total",
            "action=\"log\",outcome=\"done\"",
            get(&a.log),
        );
        out.family(
            "hub_alert_webhook_tries_total",
            "counter",
            "Webhook POSTs, by outcome (delivered: a 2xx; retried: kept for a later try).",
        );
        out.sample(
            "hub_alert_webhook_tries_total",
            "outcome=\"delivered\"",
            get(&self.webhooks.delivered),
        );
        out.sample(
            "hub_alert_webhook_tries_total",
            "outcome=\"retried\"",
            get(&self.webhooks.retried),
        );
        let outbox = self
            .store
            .outbox_len()
            .map_err(|e| CollectError::new("rules", e))?;
        out.single(
            "hub_alert_webhook_outbox",
            "gauge",
            "Webhook notifications waiting for their receivers.",
            outbox,
        );
        out.single(
            "hub_rule_expr_errors_total",
            "counter",
            "Rule expressions that could not be evaluated (false for that reading).",
            get(&self.expr_errors),
        );
        out.single(
            "hub_alerts_refused_total",
            "counter",
            "Alerts not tracked because the bound on alerts was reached.",
            get(&self.refused),
        );
        out.single(
            "hub_rules_caught_up_readings_total",
            "counter",
            "Readings the rules read back from the store after falling behind the live broadcast.",
            get(&self.caught_up),
        );
        Ok(())
    }
}
