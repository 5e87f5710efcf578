//! Remediation policy: TOML rules from findings and event severity to an ordered plan.

use serde::{Deserialize, Serialize};

use crate::event::{EventSource, RiskEvent, RiskLevel};
use crate::investigate::Findings;

/// The policy compiled into the binary (`config/policy.toml`).
pub const DEFAULT_POLICY: &str = include_str!("../config/policy.toml");

/// Whether actions are carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Plan and record only.
    #[default]
    ReportOnly,
    /// Carry out the plan.
    Enforce,
}

/// One remediation step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    RevokeSessions,
    ResetPassword,
    DismissRisk,
    ConfirmCompromised,
    BlockSignIn,
    UnblockSignIn,
    Notify,
}

/// Where temporary passwords are delivered.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "channel", rename_all = "kebab-case", deny_unknown_fields)]
pub enum PasswordDelivery {
    /// Mail through Graph `sendMail`.
    Mail {
        sender: String,
        #[serde(default)]
        to: Vec<String>,
        #[serde(default)]
        to_manager: bool,
    },
    /// A new Secrets Manager secret, deleted after `ttl_hours`.
    SecretsManager {
        name_prefix: String,
        #[serde(default = "default_ttl_hours")]
        ttl_hours: u32,
    },
}

fn default_ttl_hours() -> u32 {
    24
}

/// Who is told about remediations.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    pub sender: String,
    pub to: Vec<String>,
}

/// A rule: conditions and the actions they call for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    #[serde(default = "lowest")]
    pub min_risk_level: RiskLevel,
    #[serde(default)]
    pub min_blocked_sign_ins: usize,
    #[serde(default)]
    pub sources: Option<Vec<EventSource>>,
    pub actions: Vec<Action>,
}

fn lowest() -> RiskLevel {
    RiskLevel::Low
}

/// The whole policy document.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub mode: Mode,
    #[serde(default = "default_lookback")]
    pub lookback_hours: u32,
    #[serde(default)]
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub password_delivery: Option<PasswordDelivery>,
    #[serde(default)]
    pub notify: Option<Notify>,
}

fn default_lookback() -> u32 {
    24
}

/// A policy that cannot be used, naming the rule and the problem.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy is not valid TOML: {0}")]
    Syntax(String),
    #[error("rule {rule:?}: {problem}")]
    Rule { rule: String, problem: &'static str },
    #[error("lookback_hours must be between 1 and 720 (30 days of sign-in logs)")]
    Lookback,
}

/// The ordered actions for one event, or why there are none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub rule: Option<String>,
    pub actions: Vec<Action>,
    /// Why nothing is to be done, when `actions` is empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Policy {
    /// Parses and checks a policy document.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let policy: Policy =
            toml::from_str(text).map_err(|e| PolicyError::Syntax(e.to_string()))?;
        policy.validate()?;
        Ok(policy)
    }

    /// The embedded default policy.
    pub fn default_policy() -> Self {
        Self::from_toml(DEFAULT_POLICY).expect("embedded policy is valid (tested)")
    }

    fn validate(&self) -> Result<(), PolicyError> {
        if !(1..=720).contains(&self.lookback_hours) {
            return Err(PolicyError::Lookback);
        }
        for rule in &self.rules {
            let has = |a: Action| rule.actions.contains(&a);
            let problem = if rule.actions.is_empty() {
                Some("has no actions")
            } else if has(Action::BlockSignIn) && has(Action::UnblockSignIn) {
                Some("both blocks and unblocks sign-in")
            } else if has(Action::DismissRisk) && has(Action::ConfirmCompromised) {
                Some("both dismisses and confirms the risk")
            } else if has(Action::ResetPassword) && self.password_delivery.is_none() {
                Some("resets passwords but [password_delivery] is not configured")
            } else if has(Action::Notify) && self.notify.is_none() {
                Some("notifies but [notify] is not configured")
            } else if (1..rule.actions.len()).any(|i| rule.actions[..i].contains(&rule.actions[i]))
            {
                Some("lists an action twice")
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(PolicyError::Rule {
                    rule: rule.name.clone(),
                    problem,
                });
            }
        }
        Ok(())
    }

    /// The plan for `event` given what investigation found.
    pub fn plan(&self, event: &RiskEvent, findings: &Findings) -> Plan {
        if !findings.at_risk() {
            let state = findings
                .risky_user
                .as_ref()
                .and_then(|r| r.risk_state.clone())
                .unwrap_or_else(|| "none".into());
            return Plan {
                rule: None,
                actions: Vec::new(),
                reason: Some(format!("user is no longer at risk (riskState {state})")),
            };
        }
        let graph_level = findings
            .risky_user
            .as_ref()
            .and_then(|r| r.risk_level.as_deref())
            .map_or(RiskLevel::Unknown, RiskLevel::parse_lenient);
        let level = graph_level.max(event.risk_level);
        let blocked = findings.blocked_sign_ins.len();
        let matching = self.rules.iter().find(|rule| {
            level >= rule.min_risk_level
                && blocked >= rule.min_blocked_sign_ins
                && rule
                    .sources
                    .as_ref()
                    .is_none_or(|sources| sources.contains(&event.source))
        });
        match matching {
            Some(rule) => Plan {
                rule: Some(rule.name.clone()),
                actions: rule.actions.clone(),
                reason: None,
            },
            None => Plan {
                rule: None,
                actions: Vec::new(),
                reason: Some(format!(
                    "no rule matches risk level {level:?} with {blocked} blocked sign-ins"
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Policy::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn embedded_policy_is_valid_and_report_only() {
        let policy = Policy::from_toml(DEFAULT_POLICY).unwrap();
        assert_eq!(policy.mode, Mode::ReportOnly);
        assert_eq!(policy.rules.len(), 2);
    }

    #[test]
    fn contradictory_or_unconfigured_rules_are_refused() {
        assert_eq!(
            err(r#"[[rules]]
name = "r"
actions = ["block_sign_in", "unblock_sign_in"]"#),
            "rule \"r\": both blocks and unblocks sign-in"
        );
        assert_eq!(
            err(r#"[[rules]]
name = "r"
actions = ["reset_password"]"#),
            "rule \"r\": resets passwords but [password_delivery] is not configured"
        );
        assert_eq!(
            err(r#"[[rules]]
name = "r"
actions = ["revoke_sessions", "revoke_sessions"]"#),
            "rule \"r\": lists an action twice"
        );
        assert!(err("mode = \"yolo\"").contains("mode"));
        assert!(err("lookback_hours = 0").contains("lookback_hours"));
        assert!(err("unknown = 1").contains("unknown"));
    }
}
