//! What investigation learned about a case's user, kept small enough for one ledger item:
//! counts and a short summary of the newest sign-ins, never the records themselves.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::event::RiskLevel;

/// How many of the newest 53011 sign-ins a case keeps in detail.
pub const SIGN_IN_DETAILS_KEPT: usize = 5;

/// Identity Protection's risk record of a user (`riskyUser`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskRecord {
    /// `riskLevel`: low, medium, high, hidden, none.
    pub risk_level: String,
    /// `riskState`: atRisk, confirmedCompromised, remediated, dismissed, confirmedSafe, none.
    pub risk_state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk_detail: Option<String>,
    /// `riskLastUpdatedDateTime`: what tells one risk episode from the next.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub last_updated: Option<OffsetDateTime>,
}

impl RiskRecord {
    /// Whether Identity Protection considers the user at risk now.
    pub fn at_risk(&self) -> bool {
        matches!(self.risk_state.as_str(), "atRisk" | "confirmedCompromised")
    }

    /// The risk level as a comparable value.
    pub fn level(&self) -> RiskLevel {
        RiskLevel::parse_lenient(&self.risk_level)
    }
}

/// Directory facts about the user that actions depend on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserFacts {
    pub user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_principal_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_enabled: Option<bool>,
    /// Synced from on-premises Active Directory (a reset needs password writeback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_premises_sync_enabled: Option<bool>,
    /// `lastPasswordChangeDateTime`: when the password last changed, by anyone (what a resumed
    /// reset is reconciled against).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub password_changed_at: Option<OffsetDateTime>,
    /// The user's manager, when it was read with the user (`$expand=manager`) in this run;
    /// `None` when it was not read. Never stored: it is read again with the user each run.
    #[serde(skip)]
    pub manager: Option<Manager>,
}

/// The user's manager as read with the user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manager {
    /// The manager's mail address; `None` when the user has no manager, or one without a
    /// mailbox.
    pub mail: Option<String>,
}

/// The details of one blocked sign-in worth showing a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignInBrief {
    /// `createdDateTime`, RFC 3339.
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    /// City, state and country as Entra ID located the sign-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_app: Option<String>,
    /// Device name, operating system and browser.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// Sign-ins that failed with AADSTS53011 in the look-back: a count and the newest few.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignInSummary {
    pub count: u32,
    /// Start of the look-back window.
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    /// At most [`SIGN_IN_DETAILS_KEPT`], newest first.
    pub newest: Vec<SignInBrief>,
}

impl SignInSummary {
    /// An empty summary for the window starting at `since`.
    pub fn empty(since: OffsetDateTime) -> Self {
        Self {
            count: 0,
            since,
            newest: Vec::new(),
        }
    }

    /// The summary in one bounded line for the audit trail: the count, then the newest `n`
    /// sign-ins (time, application, IP address, location, client app, device), each field cut
    /// to a few dozen characters.
    pub fn short_text(&self, n: usize) -> String {
        fn field(value: Option<&str>) -> String {
            const MAX: usize = 48;
            let value = value.unwrap_or("-");
            match value.char_indices().nth(MAX) {
                Some((cut, _)) => format!("{}…", &value[..cut]),
                None => value.to_owned(),
            }
        }
        let newest: Vec<String> = self
            .newest
            .iter()
            .take(n)
            .map(|s| {
                format!(
                    "{} app {} IP {} location {} client {} device {}",
                    field(Some(&s.at)),
                    field(s.app.as_deref()),
                    field(s.ip_address.as_deref()),
                    field(s.location.as_deref()),
                    field(s.client_app.as_deref()),
                    field(s.device.as_deref())
                )
            })
            .collect();
        let mut text = format!(
            "{} sign-in(s) blocked with AADSTS53011 since {}",
            self.count, self.since
        );
        if !newest.is_empty() {
            text.push_str("; newest: ");
            text.push_str(&newest.join("; "));
        }
        text
    }

    /// Counts one more sign-in, keeping the newest few in detail.
    pub fn add(&mut self, brief: SignInBrief) {
        self.count = self.count.saturating_add(1);
        self.newest.push(brief);
        // RFC 3339 UTC timestamps sort as strings.
        self.newest.sort_by(|a, b| b.at.cmp(&a.at));
        self.newest.truncate(SIGN_IN_DETAILS_KEPT);
    }
}

/// The user's authentication-method registration (`userRegistrationDetails`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub is_mfa_registered: bool,
    pub is_sspr_registered: bool,
    #[serde(default)]
    pub methods_registered: Vec<String>,
    /// `isMfaCapable` / `isSsprCapable`: registered with methods the tenant's policies allow
    /// (and, for SSPR, enabled for the user), i.e. whether the user can actually use them.
    /// `None` where they were not read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capable: Option<Capable>,
}

/// What the user can actually use (`isMfaCapable`, `isSsprCapable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capable {
    pub mfa: bool,
    pub sspr: bool,
}

impl Registration {
    /// Whether the user can complete MFA: capable when that is known, registered otherwise.
    pub fn can_mfa(&self) -> bool {
        self.capable.map_or(self.is_mfa_registered, |c| c.mfa)
    }

    /// Whether the user can reset their own password (SSPR): capable when known, registered
    /// otherwise.
    pub fn can_sspr(&self) -> bool {
        self.capable.map_or(self.is_sspr_registered, |c| c.sspr)
    }

    /// Whether the user can fix their own risk: MFA and SSPR both usable.
    pub fn can_self_remediate(&self) -> bool {
        self.can_mfa() && self.can_sspr()
    }
}

impl Findings {
    /// What the plan knew of the account beyond its risk, one line each, for `cases show`, the
    /// audit and the mails: registration (or why it is unknown) and whether the account is
    /// synced from on-premises.
    pub fn account_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        match (&self.registration, &self.registration_unknown) {
            (Some(r), _) => lines.push(format!(
                "registration: MFA {}, SSPR {}{}",
                if r.can_mfa() { "usable" } else { "not usable" },
                if r.can_sspr() { "usable" } else { "not usable" },
                if r.methods_registered.is_empty() {
                    String::new()
                } else {
                    format!(" (methods: {})", r.methods_registered.join(", "))
                }
            )),
            (None, Some(why)) => lines.push(format!("{why}; no self-remediation offered")),
            (None, None) => {}
        }
        if self.user.on_premises_sync_enabled == Some(true) {
            lines.push(
                "synced from on-premises Active Directory (onPremisesSyncEnabled)".to_owned(),
            );
        }
        lines
    }
}

/// Everything a plan is made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Findings {
    pub user: UserFacts,
    /// `None` when Identity Protection has no record of the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk: Option<RiskRecord>,
    pub blocked_sign_ins: SignInSummary,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<Registration>,
    /// Why registration is unknown when it could not be read (licence, permission): the plan
    /// then offers no self-remediation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_unknown: Option<String>,
    /// Why the account is protected from automatic action, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protected: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub investigated_at: OffsetDateTime,
}

impl Findings {
    /// Whether Identity Protection reports the user at risk.
    pub fn at_risk(&self) -> bool {
        self.risk.as_ref().is_some_and(RiskRecord::at_risk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brief(at: &str) -> SignInBrief {
        SignInBrief {
            at: at.into(),
            app: None,
            ip_address: None,
            location: None,
            client_app: None,
            device: None,
        }
    }

    #[test]
    fn summary_counts_everything_and_keeps_the_newest_few() {
        let mut summary = SignInSummary::empty(OffsetDateTime::UNIX_EPOCH);
        for minute in 0..5000 {
            summary.add(brief(&format!(
                "2026-11-25T{:02}:{:02}:00Z",
                minute / 60 % 24,
                minute % 60
            )));
        }
        assert_eq!(summary.count, 5000);
        assert_eq!(summary.newest.len(), SIGN_IN_DETAILS_KEPT);
        assert_eq!(summary.newest[0].at, "2026-11-25T23:59:00Z");
    }

    #[test]
    fn the_short_text_is_bounded_and_names_the_details() {
        let mut summary = SignInSummary::empty(OffsetDateTime::UNIX_EPOCH);
        for minute in 0..50 {
            summary.add(SignInBrief {
                at: format!("2026-11-25T10:{minute:02}:00Z"),
                app: Some("Office 365 Exchange Online".into()),
                ip_address: Some("203.0.113.77".into()),
                location: Some("x".repeat(5000)),
                client_app: Some("Browser".into()),
                device: Some("Linux / Firefox 140.0".into()),
            });
        }
        let text = summary.short_text(3);
        assert!(text.starts_with("50 sign-in(s) blocked"), "{text}");
        assert!(
            text.contains("2026-11-25T10:49:00Z app Office 365 Exchange Online IP 203.0.113.77")
        );
        assert!(text.contains("client Browser device Linux / Firefox 140.0"));
        assert!(!text.contains("10:46:00"), "only the newest three: {text}");
        assert!(text.len() < 1000, "{} characters", text.len());
    }
}
