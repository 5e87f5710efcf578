//! The Sentinel incidents a case reports to, and where each one's comment stands (the domain
//! part of write-back, no I/O): which incidents, their documented ids (a payload cannot point
//! a write anywhere else), the comment's deterministic id, and each comment's state, so a
//! retry writes only what is missing and a later state of the case writes again. The comment's
//! text is [`super::comment`]; the writes are `respond::writeback`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use super::lease::Lease;
use crate::event::derive_event_id;

/// Incidents one case reports to (a case merging signals from more incidents keeps the first).
pub const INCIDENTS_KEPT: usize = 10;

/// Longest comment Microsoft Sentinel accepts, in UTF-16 code units (what JavaScript and .NET
/// count as characters). Source: Microsoft Sentinel documentation, "Investigate incidents"
/// (learn.microsoft.com/azure/sentinel/investigate-incidents), comments: "A single comment can
/// contain up to 30,000 characters"; the Incident Comments REST API (2025-09-01) sets no
/// `maxLength` on `properties.message`, so this documented limit is the one to honour.
pub const MAX_COMMENT_CHARS: usize = 30_000;

/// Provider names under which a Sentinel incident is a Microsoft Defender XDR incident, whose
/// `providerIncidentId` is the Defender incident id that Graph's `security/incidents` uses
/// (the product was called Microsoft 365 Defender before it was Defender XDR).
pub const DEFENDER_PROVIDERS: [&str; 3] = [
    "Microsoft XDR",
    "Microsoft Defender XDR",
    "Microsoft 365 Defender",
];

/// How a comment reaches an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommentPath {
    /// Azure Resource Manager: `PUT …/Microsoft.SecurityInsights/incidents/{id}/comments/{id}`
    /// (idempotent: the comment id is derived from the case).
    Arm,
    /// Microsoft Graph: `POST /security/incidents/{id}/comments` (Defender portal; not
    /// idempotent: the case records what it posted).
    Graph,
}

impl CommentPath {
    /// The configured spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CommentPath::Arm => "arm",
            CommentPath::Graph => "graph",
        }
    }
}

/// A Sentinel incident, as the incident trigger named it (`object.id`, `incidentNumber`,
/// `providerName`, `providerIncidentId`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arm_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_incident_id: Option<String>,
}

fn text(value: &Value, name: &str) -> Option<String> {
    value
        .get(name)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Whether `segment` is a plain ARM name segment: letters, digits, `-`, `_`, `.` and `(`/`)`,
/// not `.`/`..`, at most 260 characters. Anything else (`/`, `?`, `#`, `%`, spaces) would let a
/// payload steer our token to another resource.
fn plain_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment.len() <= 260
        && segment != "."
        && segment != ".."
        && segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '(' | ')'))
}

impl IncidentRef {
    /// The incident a signal's context names (what `ingress::sentinel` keeps in
    /// `resource_data` for incident triggers); `None` for anything else.
    pub fn from_signal_context(context: &Value) -> Option<Self> {
        let incident = IncidentRef {
            arm_id: text(context, "incidentArmId"),
            number: context.get("incidentNumber").and_then(Value::as_i64),
            provider_name: text(context, "providerName"),
            provider_incident_id: context.get("providerIncidentId").and_then(|v| match v {
                Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            }),
        };
        (incident.arm_id.is_some() || incident.provider_incident_id.is_some()).then_some(incident)
    }

    /// What tells incidents apart (ARM ids are case-insensitive).
    pub fn key(&self) -> String {
        match (&self.arm_id, &self.provider_incident_id) {
            (Some(arm), _) => arm.to_ascii_lowercase(),
            (None, Some(id)) => format!(
                "{}:{id}",
                self.provider_name.as_deref().unwrap_or("provider")
            ),
            (None, None) => String::new(),
        }
    }

    /// How people know the incident: its number, else its id.
    pub fn label(&self) -> String {
        match (self.number, &self.provider_incident_id, &self.arm_id) {
            (Some(n), _, _) => format!("#{n}"),
            (None, Some(id), _) => id.clone(),
            (None, None, Some(arm)) => arm.rsplit('/').next().unwrap_or(arm).to_owned(),
            _ => "(unnamed)".into(),
        }
    }

    /// The incident's ARM resource id if it has the documented shape
    /// `/subscriptions/{guid}/resourceGroups/{rg}/providers/Microsoft.OperationalInsights/workspaces/{ws}/providers/Microsoft.SecurityInsights/incidents/{id}`
    /// with plain segments; a payload cannot point the write at any other resource.
    pub fn arm_incident_id(&self) -> Result<&str, String> {
        let Some(id) = self.arm_id.as_deref() else {
            return Err("the incident trigger carried no incident ARM id (object.id)".into());
        };
        let parts: Vec<&str> = id.split('/').collect();
        let shape = parts.len() == 13
            && parts[0].is_empty()
            && parts[1].eq_ignore_ascii_case("subscriptions")
            && crate::support::is_guid(parts[2])
            && parts[3].eq_ignore_ascii_case("resourceGroups")
            && parts[5].eq_ignore_ascii_case("providers")
            && parts[6].eq_ignore_ascii_case("Microsoft.OperationalInsights")
            && parts[7].eq_ignore_ascii_case("workspaces")
            && parts[9].eq_ignore_ascii_case("providers")
            && parts[10].eq_ignore_ascii_case("Microsoft.SecurityInsights")
            && parts[11].eq_ignore_ascii_case("incidents")
            && [parts[4], parts[8], parts[12]]
                .iter()
                .all(|s| plain_segment(s));
        if shape {
            Ok(id)
        } else {
            Err("the incident ARM id is not a Microsoft.SecurityInsights incident id".into())
        }
    }

    /// The Defender XDR incident id (`providerIncidentId` of an incident whose provider is
    /// Microsoft Defender XDR), which `GET/POST /security/incidents/{id}` takes.
    pub fn defender_incident_id(&self) -> Result<&str, String> {
        let provider = self.provider_name.as_deref().unwrap_or("");
        if !DEFENDER_PROVIDERS
            .iter()
            .any(|p| p.eq_ignore_ascii_case(provider))
        {
            return Err(format!(
                "the incident is not a Defender XDR incident (provider {:?}): it has no Defender incident id; its workspace is not in the Defender portal, or the incident predates onboarding",
                if provider.is_empty() {
                    "none"
                } else {
                    provider
                }
            ));
        }
        match self.provider_incident_id.as_deref() {
            Some(id)
                if !id.is_empty()
                    && id.len() <= 64
                    && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') =>
            {
                Ok(id)
            }
            Some(_) => {
                Err("the Defender incident id (providerIncidentId) is not a plain id".into())
            }
            None => Err("the incident trigger carried no providerIncidentId".into()),
        }
    }
}

/// Where one incident's comment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommentState {
    /// Not written yet (the case has not settled, or the incident was just registered).
    Pending,
    /// The comment shows the case's current outcome.
    Written,
    /// The last attempt failed; the next delivery of the case's work tries again.
    Failed,
    /// Cannot be written (no usable incident id for the configured path, or the incident is
    /// gone); not retried.
    Unwritable,
}

impl CommentState {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CommentState::Pending => "pending",
            CommentState::Written => "written",
            CommentState::Failed => "failed",
            CommentState::Unwritable => "unwritable",
        }
    }
}

/// One incident's comment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentComment {
    pub incident: IncidentRef,
    pub state: CommentState,
    /// The path and outcome (see [`outcome_key`]) the incident's comment shows: for Graph,
    /// that a comment for this outcome was posted, so a retry never posts it twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written: Option<(CommentPath, String)>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub written_at: Option<OffsetDateTime>,
    /// Write attempts, and how many of them failed.
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl IncidentComment {
    /// Whether the incident must be written to for `outcome` on `path`.
    pub fn due(&self, path: CommentPath, outcome: &str) -> bool {
        self.state != CommentState::Unwritable
            && self
                .written
                .as_ref()
                .is_none_or(|(p, o)| *p != path || o != outcome)
    }

    /// Records a successful write of `outcome`.
    pub fn wrote(&mut self, path: CommentPath, outcome: &str, now: OffsetDateTime) {
        self.attempts = self.attempts.saturating_add(1);
        self.state = CommentState::Written;
        self.written = Some((path, outcome.to_owned()));
        self.written_at = Some(now);
        self.last_error = None;
    }

    /// Records a failed write; `retry` says whether a later attempt may succeed.
    pub fn failed(&mut self, error: &str, retry: bool) {
        self.attempts = self.attempts.saturating_add(1);
        self.failures = self.failures.saturating_add(1);
        self.state = if retry {
            CommentState::Failed
        } else {
            CommentState::Unwritable
        };
        self.last_error = Some(error.to_owned());
    }
}

/// The incidents a case reports to, and where each comment stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteBack {
    #[serde(default)]
    pub incidents: Vec<IncidentComment>,
    /// The worker writing the comments now (so two workers never post the same comment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<Lease>,
}

impl WriteBack {
    /// Whether the case reports to no incident.
    pub fn is_empty(&self) -> bool {
        self.incidents.is_empty() && self.claim.is_none()
    }

    /// Adds `incident` if it is new (and fewer than [`INCIDENTS_KEPT`] are kept); returns
    /// whether it was added.
    pub fn register(&mut self, incident: IncidentRef) -> bool {
        let key = incident.key();
        if key.is_empty()
            || self.incidents.len() >= INCIDENTS_KEPT
            || self.incidents.iter().any(|c| c.incident.key() == key)
        {
            return false;
        }
        self.incidents.push(IncidentComment {
            incident,
            state: CommentState::Pending,
            written: None,
            written_at: None,
            attempts: 0,
            failures: 0,
            last_error: None,
        });
        true
    }

    /// The comment of `incident`.
    pub fn get_mut(&mut self, incident: &IncidentRef) -> Option<&mut IncidentComment> {
        let key = incident.key();
        self.incidents.iter_mut().find(|c| c.incident.key() == key)
    }
}

/// The id of the case's comment on an incident: a GUID derived from the case id, the same on
/// every attempt, so a retry or a later state overwrites the same comment (ARM's
/// `incidentCommentId`).
pub fn comment_id(case_id: &str) -> String {
    let hex = derive_event_id(&["risk-responder incident comment", case_id]);
    let mut bytes = [0u8; 16];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).unwrap_or(0);
    }
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// The comment for an incident account no case could be opened for (no such user in the
/// directory, no usable id): the same key on every attempt, so a retry replaces it (ARM) or
/// finds it (Graph's marker).
pub fn unresolved_comment_key(signal_id: &str) -> String {
    format!("signal {signal_id}")
}

/// The line that ends an unresolved-account comment (see [`marker`]).
pub fn unresolved_marker(signal_id: &str) -> String {
    format!("risk-responder signal {signal_id} · no case")
}

/// What an incident is told about an account risk-responder could not act on: who, why, and
/// that a person must look. `account` and `reason` come from the payload and the directory, so
/// they are escaped.
pub fn unresolved_comment_text(signal_id: &str, account: &str, reason: &str) -> String {
    format!(
        "**risk-responder** could not act on account {}: {}. No case was opened and nothing was \
         changed; a person must check this account.\n\n{}",
        esc(account),
        esc(reason),
        unresolved_marker(signal_id)
    )
}

/// Sentinel renders basic HTML and Markdown in comments: text from elsewhere (user and app
/// names, locations from sign-in logs, Graph error messages) is escaped so that it shows as
/// written and can never become a link, an image, emphasis, a heading, a table or markup. HTML
/// metacharacters become entities; every Markdown metacharacter is backslash-escaped
/// (CommonMark: any ASCII punctuation may be); line breaks become spaces, so a value never
/// starts a line of its own, and a leading list or quote marker is escaped all the same.
pub(crate) fn esc(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    for (i, c) in value.chars().enumerate() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\r' | '\n' => out.push(' '),
            '\\' | '`' | '*' | '_' | '{' | '}' | '[' | ']' | '(' | ')' | '#' | '!' | '|' | '~' => {
                out.push('\\');
                out.push(c);
            }
            '-' | '+' | '=' if i == 0 => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// A case's write-back as text, for `cases show` (indented four spaces; empty when the case
/// reports to no incident).
pub struct WriteBackReport<'a>(pub &'a WriteBack);

impl std::fmt::Display for WriteBackReport<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in &self.0.incidents {
            write!(
                f,
                "    incident {}: comment {}",
                c.incident.label(),
                c.state.as_str()
            )?;
            if let Some((path, _)) = &c.written {
                write!(f, " via {}", path.as_str())?;
            }
            if let Some(at) = c.written_at {
                write!(f, " at {at}")?;
            }
            if c.failures > 0 {
                write!(f, "; {} failed attempt(s)", c.failures)?;
            }
            if let Some(e) = &c.last_error {
                write!(f, "; last error: {e}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn incident() -> IncidentRef {
        IncidentRef::from_signal_context(&json!({
            "incidentArmId": "/subscriptions/d0cfe6b2-9ac0-4464-9919-dccaee2e48c0/resourceGroups/rg-sentinel/providers/Microsoft.OperationalInsights/workspaces/law-sentinel/providers/Microsoft.SecurityInsights/Incidents/3d2f7a91-6c0b-4e5f-9a8d-1b2c3d4e5f60",
            "incidentNumber": 4711,
            "providerName": "Microsoft XDR",
            "providerIncidentId": "2972395",
        }))
        .unwrap()
    }

    #[test]
    fn the_comment_id_is_a_guid_derived_from_the_case() {
        let a = comment_id("c-1");
        assert_eq!(a, comment_id("c-1"));
        assert_ne!(a, comment_id("c-2"));
        assert!(crate::support::is_guid(&a), "{a}");
        assert_eq!(uuid::Uuid::parse_str(&a).unwrap().get_version_num(), 8);
    }

    #[test]
    fn only_documented_incident_ids_are_written_to() {
        let good = incident();
        assert!(good.arm_incident_id().is_ok());
        assert_eq!(good.defender_incident_id(), Ok("2972395"));
        assert_eq!(good.label(), "#4711");
        for bad in [
            "/subscriptions/d0cfe6b2-9ac0-4464-9919-dccaee2e48c0/resourceGroups/rg/providers/Microsoft.Authorization/roleAssignments/x/providers/Microsoft.SecurityInsights/incidents/1",
            "/subscriptions/d0cfe6b2-9ac0-4464-9919-dccaee2e48c0/resourceGroups/rg/providers/Microsoft.OperationalInsights/workspaces/ws/providers/Microsoft.SecurityInsights/incidents/..",
            "/subscriptions/d0cfe6b2-9ac0-4464-9919-dccaee2e48c0/resourceGroups/rg/providers/Microsoft.OperationalInsights/workspaces/ws/providers/Microsoft.SecurityInsights/incidents/1?api-version=1",
            "/subscriptions/not-a-guid/resourceGroups/rg/providers/Microsoft.OperationalInsights/workspaces/ws/providers/Microsoft.SecurityInsights/incidents/1",
            "https://evil.example/subscriptions/d0cfe6b2-9ac0-4464-9919-dccaee2e48c0/resourceGroups/rg/providers/Microsoft.OperationalInsights/workspaces/ws/providers/Microsoft.SecurityInsights/incidents/1",
            "/subscriptions/d0cfe6b2-9ac0-4464-9919-dccaee2e48c0/resourceGroups/rg/providers/Microsoft.OperationalInsights/workspaces/ws/providers/Microsoft.SecurityInsights/incidents/1/comments/x",
        ] {
            let r = IncidentRef {
                arm_id: Some(bad.into()),
                ..IncidentRef::default()
            };
            assert!(r.arm_incident_id().is_err(), "{bad}");
        }
        let sentinel_only = IncidentRef {
            provider_name: Some("Azure Sentinel".into()),
            ..incident()
        };
        assert!(sentinel_only.defender_incident_id().is_err());
        let odd = IncidentRef {
            provider_incident_id: Some("1/../../users".into()),
            ..incident()
        };
        assert!(odd.defender_incident_id().is_err());
    }

    #[test]
    fn incidents_register_once_and_are_bounded() {
        let mut w = WriteBack::default();
        assert!(w.register(incident()));
        let mut same = incident();
        same.arm_id = same.arm_id.map(|a| a.to_ascii_uppercase());
        assert!(!w.register(same), "ARM ids are case-insensitive");
        for i in 0..20 {
            w.register(IncidentRef {
                arm_id: Some(format!("/x/{i}")),
                ..IncidentRef::default()
            });
        }
        assert_eq!(w.incidents.len(), INCIDENTS_KEPT);
        assert!(!w.register(IncidentRef::default()), "nothing to name it by");
    }

    #[test]
    fn a_comment_is_due_until_written_for_this_outcome_and_path() {
        let mut w = WriteBack::default();
        w.register(incident());
        let c = &mut w.incidents[0];
        assert!(c.due(CommentPath::Arm, "a"));
        c.failed("503", true);
        assert!(c.due(CommentPath::Arm, "a"));
        assert_eq!(c.state, CommentState::Failed);
        c.wrote(CommentPath::Arm, "a", OffsetDateTime::UNIX_EPOCH);
        assert!(!c.due(CommentPath::Arm, "a"));
        assert!(c.due(CommentPath::Arm, "b"), "a later state writes again");
        assert!(c.due(CommentPath::Graph, "a"));
        c.failed("404", false);
        assert!(!c.due(CommentPath::Arm, "b"), "unwritable is not retried");
        assert_eq!((c.attempts, c.failures), (3, 2));
    }
}
