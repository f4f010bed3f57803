//! Spend and budgets per tenant.
//!
//! An adapter that knows what a run cost (the `http` adapter, from token
//! usage and the price table) puts `cost_micros` in its result. The engine
//! adds it to the tenant's spend for the UTC month of completion with
//! [`crate::Store::add_spend`], which is atomic and shared by every node on
//! the store, so a budget holds across a cluster. The node whose addition
//! carries the total across a limit publishes `budget.exceeded` (once per
//! limit and period, since totals only grow). Past the hard limit,
//! [`crate::Orchestrator::submit`] and its siblings refuse new tasks with
//! [`EngineError::BudgetExceeded`]; tasks already queued still run.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::InvalidInput;
use crate::adapter::Outcome;
use crate::engine::{EngineError, Inner};
use crate::event::EventKind;
use crate::ids::TenantId;
use crate::money::{Micros, format_micros};
use crate::time::Timestamp;

/// One tenant's limits for a calendar month (UTC), in micros (millionths of
/// a currency unit). Reaching `soft` raises an event; reaching `hard` also
/// stops new tasks.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Budget {
    /// Raise `budget.exceeded` (with `hard: false`) when spend reaches this.
    pub soft: Option<Micros>,
    /// Raise `budget.exceeded` (with `hard: true`) when spend reaches this, and refuse new tasks from then on.
    pub hard: Option<Micros>,
}

/// Budgets of every tenant: its own entry if it has one, else the default.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Budgets {
    /// For tenants without an entry in `tenants`.
    pub default: Budget,
    /// Per tenant; an entry replaces the default as a whole.
    pub tenants: BTreeMap<TenantId, Budget>,
}

impl Budgets {
    /// The budget that applies to `tenant`.
    pub fn for_tenant(&self, tenant: &TenantId) -> Budget {
        self.tenants.get(tenant).copied().unwrap_or(self.default)
    }

    /// Checks that no soft limit is above its hard limit.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        let entries = std::iter::once((None, &self.default)).chain(self.tenants.iter().map(|(t, b)| (Some(t), b)));
        for (tenant, budget) in entries {
            if let (Some(soft), Some(hard)) = (budget.soft, budget.hard)
                && soft > hard
            {
                let whose = tenant.map_or_else(|| "the default budget".to_owned(), |t| format!("tenant {t}"));
                return Err(InvalidInput::new(
                    "budgets",
                    format!(
                        "{whose} has a soft limit ({}) above its hard limit ({})",
                        format_micros(soft),
                        format_micros(hard)
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// What a run cost: the `cost_micros` of a completed run's result.
pub(crate) fn cost_of(outcome: &Outcome) -> Option<Micros> {
    match outcome {
        Outcome::Completed { result } => result.get("cost_micros").and_then(Value::as_u64),
        Outcome::Failed { .. } => None,
    }
}

/// The spend period of `at`: its UTC month, e.g. `2026-11`.
pub(crate) fn period(at: Timestamp) -> String {
    match chrono::DateTime::from_timestamp_millis(at.as_millis()) {
        Some(t) => t.format("%Y-%m").to_string(),
        None => "out-of-range".to_owned(),
    }
}

impl Inner {
    /// Refuses new work when `tenant`'s spend this month has reached its
    /// hard limit. One store read, and only when a hard limit applies.
    pub(crate) async fn check_budget(&self, tenant: &TenantId) -> Result<(), EngineError> {
        let Some(limit) = self.config.budgets.for_tenant(tenant).hard else {
            return Ok(());
        };
        let period = period(self.clock.now());
        let spent = self.store.spend(tenant, &period).await?;
        if spent >= limit {
            return Err(EngineError::BudgetExceeded { tenant: tenant.clone(), period, spent, limit });
        }
        Ok(())
    }

    /// Adds a run's cost to `tenant`'s spend and announces the limits the
    /// addition reached. A store that stays unavailable loses this one cost
    /// (logged): the task's result still records it.
    pub(crate) async fn record_spend(&self, tenant: &TenantId, outcome: &Outcome) {
        let Some(cost) = cost_of(outcome).filter(|c| *c > 0) else {
            return;
        };
        let period = period(self.clock.now());
        let mut tries = 0;
        let total = loop {
            match self.store.add_spend(tenant, &period, cost).await {
                Ok(total) => break total,
                Err(e) if e.is_retryable() && tries < 3 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100 * tries)).await;
                }
                Err(e) => {
                    tracing::warn!(%tenant, cost, error = %e, "cannot record spend");
                    return;
                }
            }
        };
        let before = total.saturating_sub(cost);
        let budget = self.config.budgets.for_tenant(tenant);
        for (limit, hard) in [(budget.soft, false), (budget.hard, true)] {
            let Some(limit) = limit else { continue };
            if before < limit && total >= limit {
                tracing::warn!(%tenant, %period, spent = %format_micros(total), limit = %format_micros(limit), hard, "budget reached");
                self.publish_for(
                    tenant,
                    EventKind::BudgetExceeded {
                        period: period.clone(),
                        spent_micros: total,
                        limit_micros: limit,
                        hard,
                    },
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_utc_months() {
        let t = Timestamp::parse_rfc3339("t", "2026-11-30T23:59:59.999Z").unwrap();
        assert_eq!(period(t), "2026-11");
        let t = Timestamp::parse_rfc3339("t", "2026-12-01T00:30:00+01:00").unwrap();
        assert_eq!(period(t), "2026-11");
    }

    #[test]
    fn tenant_entries_replace_the_default() {
        let acme = TenantId::new("acme").unwrap();
        let mut budgets = Budgets { default: Budget { soft: Some(1), hard: Some(2) }, ..Budgets::default() };
        budgets.tenants.insert(acme.clone(), Budget { soft: Some(5), hard: None });
        assert_eq!(budgets.for_tenant(&acme), Budget { soft: Some(5), hard: None });
        assert_eq!(budgets.for_tenant(&TenantId::default_tenant()).hard, Some(2));
        assert!(budgets.validate().is_ok());
        budgets.tenants.insert(acme, Budget { soft: Some(5), hard: Some(4) });
        assert_eq!(budgets.validate().unwrap_err().field, "budgets");
    }
}
