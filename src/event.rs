//! The one internal event type every ingress produces and every later stage consumes.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Where a [`RiskEvent`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventSource {
    /// A Graph change notification on the `users` resource.
    GraphUser,
    /// A Graph change notification on `security/alerts` (Identity Protection, provider IPC).
    GraphSecurityAlert,
    /// A Microsoft Sentinel alert or incident forwarded by a SOAR playbook.
    Sentinel,
    /// The scheduled sweep of Identity Protection and 53011 sign-ins.
    Sweep,
}

impl EventSource {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EventSource::GraphUser => "graph_user",
            EventSource::GraphSecurityAlert => "graph_security_alert",
            EventSource::Sentinel => "sentinel",
            EventSource::Sweep => "sweep",
        }
    }
}

/// Risk level as Entra ID Protection and Sentinel report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskLevel {
    /// No severity was given; the worker re-reads the user from Graph.
    Unknown,
    Low,
    Medium,
    High,
}

impl RiskLevel {
    /// Maps Graph `riskLevel`/alert `severity` and Sentinel `Severity` strings, case-insensitively.
    pub fn parse_lenient(value: &str) -> Self {
        match value.to_ascii_lowercase().as_str() {
            "low" | "informational" => RiskLevel::Low,
            "medium" => RiskLevel::Medium,
            "high" => RiskLevel::High,
            _ => RiskLevel::Unknown,
        }
    }
}

/// The account (or the alert that names it) an event is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Subject {
    /// A user, known by its Entra object id and/or user principal name.
    User {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        upn: Option<String>,
    },
    /// A legacy Graph security alert whose user the worker reads from Graph.
    SecurityAlert { id: String },
}

/// A validated, normalised signal that a user may be at risk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RiskEvent {
    /// Stable id derived from the source and its own ids: the idempotency key.
    pub event_id: String,
    /// Entra tenant id (lower-case GUID).
    pub tenant_id: String,
    pub source: EventSource,
    pub subject: Subject,
    pub risk_level: RiskLevel,
    /// When the source says the risk was detected (or when we received it, if it does not say).
    #[serde(with = "time::serde::rfc3339")]
    pub detected_at: OffsetDateTime,
    /// The id the source gave: Graph notification/subscription + resource, Sentinel alert id.
    pub source_id: String,
    /// Decrypted rich-notification content, when the subscription included resource data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_data: Option<serde_json::Value>,
    /// Who vouched for the signal and the tenants it may speak for (absent on signals kept
    /// before it was recorded): the worker acts only within them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

/// How a signal was vouched for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OriginKind {
    /// A Graph subscription this deployment created in the tenant.
    GraphSubscription,
    /// An Entra ID token of an allowed caller (a playbook's managed identity).
    EntraId,
    /// A Standard Webhooks signature with one of the configured keys.
    StandardWebhooks,
    /// A configured API key.
    ApiKey,
    /// The scheduled sweep, reading the tenant with our own credential.
    Sweep,
    /// An operator's replay of a saved event.
    Replay,
}

/// Who vouched for a signal: the caller, key or subscription (ids only, never a credential),
/// and the tenants it may speak for. Ingress refuses an account of another tenant; the worker
/// checks again on the queue message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub via: OriginKind,
    /// The caller (`oid`/`appid`), the key (`webhook_hmac_keys[0]`), or the subscription id.
    pub by: String,
    /// Tenants it may name (lower-case GUIDs).
    pub tenants: Vec<String>,
}

impl Origin {
    /// Whether `tenant` is one the origin may name.
    pub fn covers(&self, tenant: &str) -> bool {
        self.tenants.iter().any(|t| t.eq_ignore_ascii_case(tenant))
    }
}

/// Derives a deterministic event id from its parts (SHA-256, hex, first 32 chars), so that
/// redeliveries of the same signal collapse to one id.
pub fn derive_event_id(parts: &[&str]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in parts {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    let digest = ctx.finish();
    digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_id_is_stable_and_separates_parts() {
        assert_eq!(derive_event_id(&["a", "bc"]), derive_event_id(&["a", "bc"]));
        assert_ne!(derive_event_id(&["a", "bc"]), derive_event_id(&["ab", "c"]));
        assert_eq!(derive_event_id(&["x"]).len(), 32);
    }

    #[test]
    fn risk_level_parses_graph_and_sentinel_spellings() {
        assert_eq!(RiskLevel::parse_lenient("High"), RiskLevel::High);
        assert_eq!(RiskLevel::parse_lenient("medium"), RiskLevel::Medium);
        assert_eq!(RiskLevel::parse_lenient("Informational"), RiskLevel::Low);
        assert_eq!(RiskLevel::parse_lenient("hidden"), RiskLevel::Unknown);
    }
}
