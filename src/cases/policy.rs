//! Remediation policy: TOML rules from a case's risk level, its 53011 sign-ins and its source
//! to an ordered list of actions, and the safety rails every plan passes through.

use serde::{Deserialize, Serialize};

use crate::event::{EventSource, RiskLevel};

/// The policy compiled into the binary (`config/policy.toml`).
pub const DEFAULT_POLICY: &str = include_str!("../../config/policy.toml");

/// Role template ids of Global Administrator and Privileged Role Administrator: protected by
/// default (their holders are the tenant's way back in).
pub const DEFAULT_PROTECTED_ROLE_TEMPLATES: [&str; 2] = [
    "62e90394-69f5-4237-9190-012177145e10",
    "e8611ab8-c189-46e8-94e1-60213ab1f814",
];

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

impl Mode {
    /// The configured spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::ReportOnly => "report-only",
            Mode::Enforce => "enforce",
        }
    }
}

/// One remediation step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    RevokeSessions,
    ResetPassword,
    DismissRisk,
    ConfirmCompromised,
    BlockSignIn,
    UnblockSignIn,
    Notify,
    /// Tell the user what happened and what to do (never a password).
    NotifyUser,
}

impl Action {
    /// Whether the action changes the account or its risk (what safety rails guard: a
    /// protected account gets none of these without a person, in the first plan and in every
    /// escalation).
    pub fn changes_account(self) -> bool {
        !matches!(self, Action::Notify | Action::NotifyUser)
    }

    /// Whether it contains the account (what time-to-contain waits for): sessions revoked,
    /// sign-in blocked, password reset, compromise confirmed (Conditional Access then blocks).
    pub fn contains(self) -> bool {
        matches!(
            self,
            Action::RevokeSessions
                | Action::BlockSignIn
                | Action::ResetPassword
                | Action::ConfirmCompromised
        )
    }

    /// Whether doing it twice does no harm (the same request, the same end state). A new
    /// password or a mail is not: the worker records those before it goes on.
    pub fn idempotent(self) -> bool {
        !matches!(
            self,
            Action::ResetPassword | Action::Notify | Action::NotifyUser
        )
    }

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::RevokeSessions => "revoke_sessions",
            Action::ResetPassword => "reset_password",
            Action::DismissRisk => "dismiss_risk",
            Action::ConfirmCompromised => "confirm_compromised",
            Action::BlockSignIn => "block_sign_in",
            Action::UnblockSignIn => "unblock_sign_in",
            Action::Notify => "notify",
            Action::NotifyUser => "notify_user",
        }
    }
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
    /// A Secrets Manager secret per case, deleted after `ttl_hours`.
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
    /// When several cases of a tenant have their `notify` due in the same worker round, one
    /// digest mail lists them all (at most 100 cases and 256 KiB a mail: more are split)
    /// instead of one mail each. A case alone keeps its own mail.
    #[serde(default = "default_digest")]
    pub digest: bool,
}

fn default_digest() -> bool {
    true
}

/// How the user hears about their case (`notify_user`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyUser {
    /// Mailbox the mail is sent from (Mail.Send).
    pub sender: String,
    /// Where the mail goes when the user's own mailbox is the thing at risk (the plan blocks
    /// sign-in or confirms the compromise): `"manager"`, or a fixed address.
    #[serde(default = "default_when_mailbox_at_risk")]
    pub when_mailbox_at_risk: String,
    /// With `when_mailbox_at_risk = "manager"`: where the mail goes for a user with no manager
    /// (or one without a mailbox), e.g. the helpdesk's shared mailbox. Unset: the mail is
    /// skipped, with the reason.
    #[serde(default)]
    pub when_no_manager: Option<String>,
    /// The self-service password reset page.
    #[serde(default = "default_sspr_url")]
    pub sspr_url: String,
    /// How to reach the helpdesk, as the mail should say it.
    pub helpdesk: String,
}

fn default_when_mailbox_at_risk() -> String {
    "manager".into()
}

fn default_sspr_url() -> String {
    "https://aka.ms/sspr".into()
}

/// Self-remediation: users registered for MFA and self-service password reset change their
/// password themselves (the user-risk Conditional Access policy lets them) instead of getting
/// an admin reset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfRemediation {
    #[serde(default)]
    pub enabled: bool,
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
    /// Only users registered (true) or not registered (false) for MFA.
    #[serde(default)]
    pub mfa_registered: Option<bool>,
    /// Only users synced from on-premises (true) or cloud-only (false).
    #[serde(default)]
    pub synced: Option<bool>,
    pub actions: Vec<Action>,
}

/// What a rule's optional conditions look at, beyond level, sign-ins and source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserTraits {
    pub mfa_registered: Option<bool>,
    pub synced: Option<bool>,
}

fn lowest() -> RiskLevel {
    RiskLevel::Low
}

/// Safety rails: limits on what automatic remediation may do without a person.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Safety {
    /// Break-glass and other accounts never acted on automatically (object ids).
    #[serde(default)]
    pub protected_user_ids: Vec<String>,
    /// Members (transitive) of these groups are protected.
    #[serde(default)]
    pub protected_group_ids: Vec<String>,
    /// Holders of these directory roles (role template ids) are protected.
    #[serde(default = "default_protected_roles")]
    pub protected_role_template_ids: Vec<String>,
    /// At most one automatic password reset per user within this many hours.
    #[serde(default = "default_cooldown")]
    pub reset_cooldown_hours: u32,
    /// At most this many enforced cases per tenant in any hour; past it, cases wait for a person.
    #[serde(default = "default_blast_radius")]
    pub max_enforced_cases_per_hour: u32,
    /// How long a case opened by a source's own detection (no Identity Protection record)
    /// takes in further signals for the same user.
    #[serde(default = "default_source_window")]
    pub source_episode_hours: u32,
}

fn default_protected_roles() -> Vec<String> {
    DEFAULT_PROTECTED_ROLE_TEMPLATES
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

fn default_cooldown() -> u32 {
    24
}

fn default_blast_radius() -> u32 {
    20
}

fn default_source_window() -> u32 {
    24
}

impl Default for Safety {
    fn default() -> Self {
        Self {
            protected_user_ids: Vec::new(),
            protected_group_ids: Vec::new(),
            protected_role_template_ids: default_protected_roles(),
            reset_cooldown_hours: default_cooldown(),
            max_enforced_cases_per_hour: default_blast_radius(),
            source_episode_hours: default_source_window(),
        }
    }
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
    #[serde(default)]
    pub safety: Safety,
    /// Whether on-premises password writeback is set up: without it, a cloud password reset of
    /// a synced (hybrid) user does not take effect, and the plan refuses it.
    #[serde(default)]
    pub password_writeback: bool,
    #[serde(default)]
    pub self_remediation: SelfRemediation,
    #[serde(default)]
    pub notify_user: Option<NotifyUser>,
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
    #[error("{key} = {value} is out of range: it must be from {min} to {max} {unit}")]
    Range {
        key: &'static str,
        value: u64,
        min: u64,
        max: u64,
        unit: &'static str,
    },
    #[error("[safety] {0}")]
    Safety(&'static str),
    #[error("{key} = {value:?}: {problem}")]
    Value {
        key: &'static str,
        value: String,
        problem: &'static str,
    },
}

/// Every number of the policy, with its key and allowed range: values outside are refused
/// when the policy is loaded (an hour count near `u32::MAX` would overflow time arithmetic).
fn numbers(policy: &Policy) -> Vec<(&'static str, u64, u64, u64, &'static str)> {
    let safety = &policy.safety;
    let mut out = vec![
        // Entra keeps 30 days of sign-in logs.
        (
            "lookback_hours",
            u64::from(policy.lookback_hours),
            1,
            720,
            "hours",
        ),
        (
            "safety.reset_cooldown_hours",
            u64::from(safety.reset_cooldown_hours),
            0,
            8_760,
            "hours",
        ),
        (
            "safety.max_enforced_cases_per_hour",
            u64::from(safety.max_enforced_cases_per_hour),
            1,
            10_000,
            "cases",
        ),
        (
            "safety.source_episode_hours",
            u64::from(safety.source_episode_hours),
            1,
            720,
            "hours",
        ),
    ];
    if let Some(PasswordDelivery::SecretsManager { ttl_hours, .. }) = &policy.password_delivery {
        out.push((
            "password_delivery.ttl_hours",
            u64::from(*ttl_hours),
            1,
            720,
            "hours",
        ));
    }
    for rule in &policy.rules {
        out.push((
            "rules.min_blocked_sign_ins",
            rule.min_blocked_sign_ins as u64,
            0,
            100_000,
            "sign-ins",
        ));
    }
    out
}

/// Whether `value` reads as one mail address (`local@domain`).
fn is_address(value: &str) -> bool {
    value.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !value
                .chars()
                .any(|c| c.is_whitespace() || c == ',' || c == ';')
    })
}

impl Policy {
    /// Parses and checks a policy document.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let mut policy: Policy =
            toml::from_str(text).map_err(|e| PolicyError::Syntax(e.to_string()))?;
        policy.validate()?;
        for ids in [
            &mut policy.safety.protected_user_ids,
            &mut policy.safety.protected_group_ids,
            &mut policy.safety.protected_role_template_ids,
        ] {
            for id in ids.iter_mut() {
                *id = id.to_ascii_lowercase();
            }
        }
        Ok(policy)
    }

    /// The embedded default policy.
    pub fn default_policy() -> Self {
        Self::from_toml(DEFAULT_POLICY).expect("embedded policy is valid (tested)")
    }

    fn validate(&self) -> Result<(), PolicyError> {
        for (key, value, min, max, unit) in numbers(self) {
            if !(min..=max).contains(&value) {
                return Err(PolicyError::Range {
                    key,
                    value,
                    min,
                    max,
                    unit,
                });
            }
        }
        let mut addresses: Vec<(&'static str, &String)> = Vec::new();
        if let Some(PasswordDelivery::Mail { sender, to, .. }) = &self.password_delivery {
            addresses.push(("password_delivery.sender", sender));
            addresses.extend(to.iter().map(|a| ("password_delivery.to", a)));
        }
        if let Some(notify) = &self.notify {
            addresses.push(("notify.sender", &notify.sender));
            addresses.extend(notify.to.iter().map(|a| ("notify.to", a)));
        }
        if let Some(user) = &self.notify_user {
            addresses.push(("notify_user.sender", &user.sender));
            addresses.extend(
                user.when_no_manager
                    .iter()
                    .map(|a| ("notify_user.when_no_manager", a)),
            );
            if user.when_mailbox_at_risk != "manager" {
                addresses.push((
                    "notify_user.when_mailbox_at_risk",
                    &user.when_mailbox_at_risk,
                ));
            }
            if !user.sspr_url.starts_with("https://") || user.sspr_url.len() <= "https://".len() {
                return Err(PolicyError::Value {
                    key: "notify_user.sspr_url",
                    value: user.sspr_url.clone(),
                    problem: "must be an https:// address",
                });
            }
        }
        if let Some((key, value)) = addresses.into_iter().find(|(_, a)| !is_address(a)) {
            return Err(PolicyError::Value {
                key,
                value: value.clone(),
                problem: "must be one mail address (name@domain)",
            });
        }
        let safety = &self.safety;
        let ids = safety
            .protected_user_ids
            .iter()
            .chain(&safety.protected_group_ids)
            .chain(&safety.protected_role_template_ids);
        if ids.clone().any(|id| !crate::support::is_guid(id)) {
            return Err(PolicyError::Safety(
                "protected ids must be object ids (GUIDs)",
            ));
        }
        if self.self_remediation.enabled && self.notify_user.is_none() {
            return Err(PolicyError::Safety(
                "self-remediation tells users what to do: configure [notify_user]",
            ));
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
            } else if has(Action::NotifyUser) && self.notify_user.is_none() {
                Some("tells the user but [notify_user] is not configured")
            } else if (1..rule.actions.len()).any(|i| rule.actions[..i].contains(&rule.actions[i]))
            {
                Some("lists an action twice")
            } else if rule
                .actions
                .iter()
                .skip_while(|a| **a != Action::NotifyUser)
                .any(|a| !matches!(a, Action::NotifyUser | Action::Notify))
            {
                // The user mail says what happened: it goes after what it tells about.
                Some("lists notify_user before an action it tells the user about: put it last")
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

    /// The first rule whose conditions hold for a case at `level` with `blocked` 53011
    /// sign-ins, opened by a signal from `source` (user traits unknown).
    pub fn rule_for(&self, level: RiskLevel, blocked: u32, source: EventSource) -> Option<&Rule> {
        self.rule_for_user(level, blocked, source, UserTraits::default())
    }

    /// As [`Policy::rule_for`], also matching the rules' registration and sync conditions
    /// (a condition on an unknown trait does not hold).
    pub fn rule_for_user(
        &self,
        level: RiskLevel,
        blocked: u32,
        source: EventSource,
        traits: UserTraits,
    ) -> Option<&Rule> {
        let holds =
            |wanted: Option<bool>, actual: Option<bool>| wanted.is_none_or(|w| actual == Some(w));
        self.rules.iter().find(|rule| {
            level >= rule.min_risk_level
                && blocked as usize >= rule.min_blocked_sign_ins
                && rule
                    .sources
                    .as_ref()
                    .is_none_or(|sources| sources.contains(&source))
                && holds(rule.mfa_registered, traits.mfa_registered)
                && holds(rule.synced, traits.synced)
        })
    }

    /// Whether mails may go to users' managers (the password to the manager, or the user's
    /// mail when their own mailbox is at risk): investigation then reads each user's manager
    /// with the user.
    pub fn mails_managers(&self) -> bool {
        matches!(
            self.password_delivery,
            Some(PasswordDelivery::Mail {
                to_manager: true,
                ..
            })
        ) || self
            .notify_user
            .as_ref()
            .is_some_and(|n| n.when_mailbox_at_risk == "manager")
    }

    /// Whether investigation must read users' authentication-method registration.
    pub fn needs_registration(&self) -> bool {
        self.self_remediation.enabled || self.rules.iter().any(|r| r.mfa_registered.is_some())
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
        assert_eq!(policy.safety.max_enforced_cases_per_hour, 20);
        assert_eq!(policy.safety.reset_cooldown_hours, 24);
        assert!(
            policy
                .safety
                .protected_role_template_ids
                .contains(&"62e90394-69f5-4237-9190-012177145e10".to_owned())
        );
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
        assert_eq!(
            err(r#"[notify_user]
sender = "soc@contoso.com"
helpdesk = "helpdesk@contoso.com"
[[rules]]
name = "r"
actions = ["revoke_sessions", "notify_user", "dismiss_risk"]"#),
            "rule \"r\": lists notify_user before an action it tells the user about: put it last"
        );
        assert!(err("mode = \"yolo\"").contains("mode"));
        assert!(err("lookback_hours = 0").contains("lookback_hours"));
        assert!(err("unknown = 1").contains("unknown"));
        assert!(err("[safety]\nprotected_user_ids = [\"alice\"]").contains("GUIDs"));
        assert!(err("[safety]\nmax_enforced_cases_per_hour = 0").contains("from 1 to 10000 cases"));
        // Hours near u32::MAX would overflow time arithmetic: refused, naming key and range.
        assert_eq!(
            err("[safety]\nreset_cooldown_hours = 4294967295"),
            "safety.reset_cooldown_hours = 4294967295 is out of range: it must be from 0 to 8760 hours"
        );
        assert!(err("lookback_hours = 721").contains("from 1 to 720 hours"));
        assert!(
            err("[safety]\nsource_episode_hours = 4294967295")
                .contains("safety.source_episode_hours")
        );
        assert!(err("[notify]\nsender = \"soc\"\nto = []").contains("notify.sender"));
        assert!(
            err("[notify_user]\nsender = \"a@b.c\"\nhelpdesk = \"x\"\nsspr_url = \"http://evil.example\"")
                .contains("notify_user.sspr_url")
        );
    }

    #[test]
    fn first_matching_rule_wins() {
        let policy = Policy::default_policy();
        let high = policy
            .rule_for(RiskLevel::High, 1, EventSource::Sentinel)
            .unwrap();
        assert!(high.actions.contains(&Action::ConfirmCompromised));
        let medium = policy
            .rule_for(RiskLevel::High, 0, EventSource::Sentinel)
            .unwrap();
        assert!(medium.actions.contains(&Action::DismissRisk));
        assert!(
            policy
                .rule_for(RiskLevel::Low, 5, EventSource::GraphUser)
                .is_none()
        );
    }
}
