//! Remediation: carry out a [`Plan`] through Graph (enforce) or only record it (report-only).
//! Temporary passwords are generated here, delivered through the configured secure channel
//! before they are set, and never logged or returned.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::event::RiskEvent;
use crate::graph::{GraphClient, GraphError};
use crate::investigate::Findings;
use crate::policy::{Action, Mode, PasswordDelivery, Plan, Policy};
use crate::secrets::SecretString;

/// What happened to one action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ActionStatus {
    /// Report-only: would have been done.
    Planned,
    Done {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    Failed {
        error: String,
        transient: bool,
        /// Credentials, permissions or configuration must be fixed first.
        #[serde(default)]
        needs_operator: bool,
    },
    /// Not attempted because an earlier action failed.
    NotAttempted,
}

/// One action and its status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionOutcome {
    pub action: Action,
    #[serde(flatten)]
    pub status: ActionStatus,
}

/// The result of remediating one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub mode: Mode,
    pub plan: Plan,
    pub actions: Vec<ActionOutcome>,
}

impl Outcome {
    /// Whether a failed action may succeed on retry.
    pub fn transient_failure(&self) -> bool {
        self.actions.iter().any(|a| {
            matches!(
                a.status,
                ActionStatus::Failed {
                    transient: true,
                    ..
                }
            )
        })
    }

    /// Whether a failed action waits for an operator (permissions, credentials, configuration).
    pub fn needs_operator(&self) -> bool {
        self.actions.iter().any(|a| {
            matches!(
                a.status,
                ActionStatus::Failed {
                    needs_operator: true,
                    ..
                }
            )
        })
    }

    /// Whether any action failed.
    pub fn failed(&self) -> bool {
        self.actions
            .iter()
            .any(|a| matches!(a.status, ActionStatus::Failed { .. }))
    }
}

/// A temporary password could not be delivered; it is then not set.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeliveryError {
    #[error("password delivery failed: {0}")]
    Graph(#[from] GraphError),
    #[error("password delivery has no recipient (no manager and no fixed address)")]
    NoRecipient,
    #[error("password vault unavailable: {0}")]
    Vault(String),
}

impl DeliveryError {
    fn needs_operator(&self) -> bool {
        match self {
            DeliveryError::Graph(e) => e.needs_operator(),
            DeliveryError::NoRecipient => true,
            DeliveryError::Vault(_) => false,
        }
    }

    fn transient(&self) -> bool {
        match self {
            DeliveryError::Graph(e) => e.is_transient(),
            DeliveryError::NoRecipient => false,
            DeliveryError::Vault(_) => true,
        }
    }
}

/// Port: a short-lived secret store for temporary passwords (Secrets Manager).
#[async_trait]
pub trait PasswordVault: Send + Sync {
    /// Stores `password` under `name`, to be deleted after `ttl_hours`; returns its id.
    async fn store(
        &self,
        name: &str,
        password: &SecretString,
        ttl_hours: u32,
    ) -> Result<String, String>;
}

/// Characters of temporary passwords (no look-alikes: 0 O 1 l I).
const UPPER: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ";
const LOWER: &[u8] = b"abcdefghijkmnopqrstuvwxyz";
const DIGIT: &[u8] = b"23456789";
const SYMBOL: &[u8] = b"!@#$%^&*-_=+?";
/// Length of temporary passwords (Entra requires 8 to 256, three of four classes).
pub const TEMP_PASSWORD_LEN: usize = 20;

fn random_below(n: usize) -> usize {
    // Rejection sampling over u32 keeps the choice uniform.
    let n32 = n as u32;
    let zone = u32::MAX - (u32::MAX % n32);
    loop {
        let mut bytes = [0u8; 4];
        aws_lc_rs::rand::fill(&mut bytes).expect("system RNG available");
        let v = u32::from_le_bytes(bytes);
        if v < zone {
            return (v % n32) as usize;
        }
    }
}

/// A random temporary password holding every character class (upper, lower, digit, symbol).
pub fn generate_temporary_password() -> SecretString {
    let classes = [UPPER, LOWER, DIGIT, SYMBOL];
    let all: Vec<u8> = classes.concat();
    let mut chars: Vec<u8> = classes.iter().map(|c| c[random_below(c.len())]).collect();
    while chars.len() < TEMP_PASSWORD_LEN {
        chars.push(all[random_below(all.len())]);
    }
    for i in (1..chars.len()).rev() {
        chars.swap(i, random_below(i + 1));
    }
    SecretString::new(String::from_utf8(chars).expect("ASCII"))
}

/// Carries out plans.
pub struct Remediator {
    pub graph: Arc<GraphClient>,
    pub policy: Arc<Policy>,
    pub vault: Option<Arc<dyn PasswordVault>>,
}

impl Remediator {
    /// Executes `plan` (or only records it in report-only mode), skipping actions in `done`
    /// (completed by an earlier attempt). Stops at the first failure.
    pub async fn execute(
        &self,
        event: &RiskEvent,
        findings: &Findings,
        plan: Plan,
        done: &[Action],
    ) -> Outcome {
        let mode = self.policy.mode;
        let mut actions = Vec::with_capacity(plan.actions.len());
        let mut stopped = false;
        for &action in &plan.actions {
            let status = if mode == Mode::ReportOnly {
                ActionStatus::Planned
            } else if stopped {
                ActionStatus::NotAttempted
            } else if done.contains(&action) {
                ActionStatus::Done {
                    detail: Some("done in an earlier attempt".into()),
                }
            } else {
                match self.run(action, event, findings, &plan).await {
                    Ok(detail) => ActionStatus::Done { detail },
                    Err((error, transient, needs_operator)) => {
                        stopped = true;
                        ActionStatus::Failed {
                            error,
                            transient,
                            needs_operator,
                        }
                    }
                }
            };
            tracing::info!(event_id = %event.event_id, tenant_id = %event.tenant_id, ?action, ?status, "remediation action");
            actions.push(ActionOutcome { action, status });
        }
        Outcome {
            mode,
            plan,
            actions,
        }
    }

    async fn run(
        &self,
        action: Action,
        event: &RiskEvent,
        findings: &Findings,
        plan: &Plan,
    ) -> Result<Option<String>, (String, bool, bool)> {
        let tenant = findings.tenant_id.as_str();
        let user = findings.user_id.as_str();
        let graph_err = |e: GraphError| (e.to_string(), e.is_transient(), e.needs_operator());
        match action {
            Action::RevokeSessions => self
                .graph
                .revoke_sign_in_sessions(tenant, user)
                .await
                .map_err(graph_err)?,
            Action::DismissRisk => self
                .graph
                .dismiss_risk(tenant, user)
                .await
                .map_err(graph_err)?,
            Action::ConfirmCompromised => self
                .graph
                .confirm_compromised(tenant, user)
                .await
                .map_err(graph_err)?,
            Action::BlockSignIn => self
                .graph
                .set_account_enabled(tenant, user, false)
                .await
                .map_err(graph_err)?,
            Action::UnblockSignIn => self
                .graph
                .set_account_enabled(tenant, user, true)
                .await
                .map_err(graph_err)?,
            Action::ResetPassword => {
                let password = generate_temporary_password();
                let delivered = self
                    .deliver(event, findings, &password)
                    .await
                    .map_err(|e| (e.to_string(), e.transient(), e.needs_operator()))?;
                self.graph
                    .reset_password(tenant, user, &password)
                    .await
                    .map_err(graph_err)?;
                return Ok(Some(delivered));
            }
            Action::Notify => {
                let Some(notify) = &self.policy.notify else {
                    return Err(("[notify] is not configured".into(), false, true));
                };
                let upn = findings.user_principal_name.as_deref().unwrap_or(user);
                let text = format!(
                    "risk-responder acted on {upn} (tenant {tenant}).\nEvent: {} from {:?}, source id {}.\nRule: {}\nActions: {:?}\nBlocked sign-ins (53011) in the look-back: {}\n",
                    event.event_id,
                    event.source,
                    event.source_id,
                    plan.rule.as_deref().unwrap_or("-"),
                    plan.actions,
                    findings.blocked_sign_ins.len(),
                );
                self.graph
                    .send_mail(
                        tenant,
                        &notify.sender,
                        &notify.to,
                        &format!("risk-responder: {upn}"),
                        &text,
                    )
                    .await
                    .map_err(graph_err)?;
            }
        }
        Ok(None)
    }

    /// Delivers the password; returns where it went (never the password).
    async fn deliver(
        &self,
        event: &RiskEvent,
        findings: &Findings,
        password: &SecretString,
    ) -> Result<String, DeliveryError> {
        let tenant = findings.tenant_id.as_str();
        let upn = findings
            .user_principal_name
            .as_deref()
            .unwrap_or(&findings.user_id);
        match &self.policy.password_delivery {
            None => Err(DeliveryError::NoRecipient),
            Some(PasswordDelivery::Mail {
                sender,
                to,
                to_manager,
            }) => {
                let mut recipients = to.clone();
                if *to_manager
                    && let Some(manager) = self.graph.manager(tenant, &findings.user_id).await?
                    && let Some(mail) = manager.mail
                {
                    recipients.push(mail);
                }
                if recipients.is_empty() {
                    return Err(DeliveryError::NoRecipient);
                }
                let text = format!(
                    "The password of {upn} was reset after an Identity Protection risk detection.\n\
                     Temporary password (must be changed at next sign-in): {}\n\
                     Give it to the user through a verified channel.\n",
                    password.expose()
                );
                self.graph
                    .send_mail(
                        tenant,
                        sender,
                        &recipients,
                        &format!("Temporary password for {upn}"),
                        &text,
                    )
                    .await?;
                Ok(format!("mailed to {} recipient(s)", recipients.len()))
            }
            Some(PasswordDelivery::SecretsManager {
                name_prefix,
                ttl_hours,
            }) => {
                let vault = self
                    .vault
                    .as_ref()
                    .ok_or_else(|| DeliveryError::Vault("no Secrets Manager client".into()))?;
                let name = format!(
                    "{name_prefix}{tenant}/{}/{}",
                    findings.user_id, event.event_id
                );
                let id = vault
                    .store(&name, password, *ttl_hours)
                    .await
                    .map_err(DeliveryError::Vault)?;
                Ok(format!("stored in Secrets Manager as {id}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_passwords_meet_entra_complexity_and_differ() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let p = generate_temporary_password();
            let p = p.expose();
            assert_eq!(p.len(), TEMP_PASSWORD_LEN);
            assert!(p.bytes().any(|b| UPPER.contains(&b)));
            assert!(p.bytes().any(|b| LOWER.contains(&b)));
            assert!(p.bytes().any(|b| DIGIT.contains(&b)));
            assert!(p.bytes().any(|b| SYMBOL.contains(&b)));
            assert!(seen.insert(p.to_owned()), "repeated password");
        }
    }
}
