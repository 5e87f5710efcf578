//! Write-back: when a case that merged a signal from a Microsoft Sentinel incident settles
//! (completed, skipped, awaiting approval, needing an operator), its outcome goes onto the
//! incident as a comment, through Azure Resource Manager or, for workspaces in the Defender
//! portal, Microsoft Graph (`RR_INCIDENT_COMMENTS=arm|graph|off`).
//!
//! - ARM: `PUT {incident ARM id}/comments/{comment id}?api-version=2025-09-01` with
//!   `{"properties":{"message":…}}`, an app-only token for `https://management.azure.com/.default`
//!   (the Microsoft Sentinel Responder role on the workspace). The comment id is derived from
//!   the case, so a retry or a later state overwrites the same comment.
//! - Graph: `POST /security/incidents/{Defender incident id}/comments` with an
//!   `alertComment` (SecurityIncident.ReadWrite.All). Not idempotent: the case records which
//!   outcome it posted per incident, and before posting the incident's comments are read for
//!   this outcome's marker (a post whose answer was lost is not posted again).
//!
//! A write-back never touches remediation: it runs after the case is saved, on a fresh copy,
//! and records only its own state on the case (conditional writes, like everything else). A
//! failed comment is logged, counted, recorded on the case, and kept for retry: the work item
//! is left for redelivery (then the alarmed DLQ), and the redelivery finds the case settled and
//! retries only the comment.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;

use super::disposition::Disposition;
use crate::cases::Case;
use crate::cases::case::Lease;
use crate::cases::comment::{comment_text, marker, outcome_key, settled};
use crate::cases::incident::{
    CommentPath, CommentState, IncidentRef, comment_id, unresolved_comment_key,
    unresolved_comment_text, unresolved_marker,
};
use crate::config::Config;
use crate::event::{EventSource, RiskEvent};
use crate::graph::api::segment;
use crate::graph::{GraphClient, GraphError, RetryPolicy, TokenProvider};
use crate::ledger::Ledger;

/// The Microsoft.SecurityInsights api-version the comments are written with.
pub const ARM_API_VERSION: &str = "2025-09-01";
/// The scope of app-only tokens for Azure Resource Manager.
pub const ARM_SCOPE: &str = "https://management.azure.com/.default";
/// Azure Resource Manager in the public cloud.
pub const ARM_BASE_URL: &str = "https://management.azure.com";
/// How long a worker holds the right to write a case's comments (longer than a write with all
/// its retries; shorter than the worker's timeout, so a crashed writer's claim lapses before
/// the redelivery).
const CLAIM: time::Duration = time::Duration::minutes(5);
/// Optimistic-concurrency rounds on the case before the write-back is left for retry.
const MAX_CONFLICTS: usize = 16;

/// Why a comment could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArmError {
    #[error("{0}")]
    Token(GraphError),
    #[error(
        "ARM refused access (403 {code}): {message}; the application needs the Microsoft Sentinel Responder role on the workspace"
    )]
    Forbidden { code: String, message: String },
    #[error("incident not found (404 {code}): {message}")]
    NotFound { code: String, message: String },
    #[error("ARM still throttling after {attempts} attempts")]
    Throttled { attempts: u32 },
    #[error("ARM error {status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("ARM unreachable: {0}")]
    Transport(String),
}

/// ARM's error envelope: `{"error":{"code","message"}}`.
#[derive(Deserialize, Default)]
struct ArmEnvelope {
    #[serde(default)]
    error: ArmErrorBody,
}

#[derive(Deserialize, Default)]
struct ArmErrorBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// A minimal Azure Resource Manager client for incident comments: app-only tokens (its own
/// provider, same application and credential as Graph), retries on 429 and 5xx honouring
/// `Retry-After`, one token refresh on 401.
pub struct ArmClient {
    http: reqwest::Client,
    base_url: String,
    tokens: Arc<TokenProvider>,
    retry: RetryPolicy,
    requests: AtomicUsize,
}

fn backoff(retry: &RetryPolicy, attempt: u32) -> Duration {
    let exp = retry
        .base_delay
        .saturating_mul(1 << attempt.saturating_sub(1).min(10));
    let mut byte = [0u8; 1];
    let jitter = if aws_lc_rs::rand::fill(&mut byte).is_ok() {
        f64::from(byte[0]) / 255.0
    } else {
        1.0
    };
    exp.min(retry.max_delay).mul_f64(0.5 + jitter / 2.0)
}

impl ArmClient {
    /// `base_url` is e.g. `https://management.azure.com`; `tokens` must ask for [`ARM_SCOPE`].
    pub fn new(
        http: reqwest::Client,
        base_url: impl Into<String>,
        tokens: Arc<TokenProvider>,
        retry: RetryPolicy,
    ) -> Self {
        Self {
            http,
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            tokens,
            retry,
            requests: AtomicUsize::new(0),
        }
    }

    /// HTTP requests sent so far (every attempt counts).
    pub fn requests_sent(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    /// Creates or replaces comment `comment_id` on the incident `incident_arm_id` (an id
    /// checked by [`IncidentRef::arm_incident_id`]); returns the status (201 created, 200
    /// replaced).
    pub async fn put_incident_comment(
        &self,
        tenant: &str,
        incident_arm_id: &str,
        comment_id: &str,
        message: &str,
    ) -> Result<u16, ArmError> {
        let url = format!(
            "{}{incident_arm_id}/comments/{comment_id}?api-version={ARM_API_VERSION}",
            self.base_url
        );
        let body = json!({ "properties": { "message": message } });
        let mut attempt = 0;
        let mut reauthenticated = false;
        loop {
            attempt += 1;
            let token = self.tokens.token(tenant).await.map_err(ArmError::Token)?;
            self.requests.fetch_add(1, Ordering::Relaxed);
            let sent = self
                .http
                .put(&url)
                .bearer_auth(token.expose())
                .timeout(self.retry.request_timeout)
                .json(&body)
                .send()
                .await;
            let response = match sent {
                Ok(r) => r,
                Err(e) => {
                    if attempt < self.retry.max_attempts {
                        tokio::time::sleep(backoff(&self.retry, attempt)).await;
                        continue;
                    }
                    return Err(ArmError::Transport(e.without_url().to_string()));
                }
            };
            let status = response.status();
            if status.is_success() {
                return Ok(status.as_u16());
            }
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let ArmErrorBody { code, message } = response
                .json::<ArmEnvelope>()
                .await
                .unwrap_or_default()
                .error;
            match status {
                StatusCode::UNAUTHORIZED if !reauthenticated => {
                    self.tokens.invalidate(tenant).await;
                    reauthenticated = true;
                    attempt -= 1;
                }
                StatusCode::TOO_MANY_REQUESTS
                | StatusCode::INTERNAL_SERVER_ERROR
                | StatusCode::BAD_GATEWAY
                | StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::GATEWAY_TIMEOUT => {
                    let wait = retry_after.unwrap_or_else(|| backoff(&self.retry, attempt));
                    if attempt >= self.retry.max_attempts || wait > self.retry.max_delay {
                        return Err(if status == StatusCode::TOO_MANY_REQUESTS {
                            ArmError::Throttled { attempts: attempt }
                        } else {
                            ArmError::Api {
                                status: status.as_u16(),
                                code,
                                message,
                            }
                        });
                    }
                    tokio::time::sleep(wait).await;
                }
                StatusCode::FORBIDDEN => return Err(ArmError::Forbidden { code, message }),
                StatusCode::NOT_FOUND => return Err(ArmError::NotFound { code, message }),
                _ => {
                    return Err(ArmError::Api {
                        status: status.as_u16(),
                        code,
                        message,
                    });
                }
            }
        }
    }
}

/// Comments written, failed, and found unwritable since start (for tests and benchmarks; the
/// log lines `incident comment written` / `incident comment failed` are what CloudWatch
/// counts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommentCounts {
    pub written: usize,
    pub failed: usize,
    pub unwritable: usize,
}

/// One comment to write: where (the tenant whose token writes it), its stable key (the comment
/// id on ARM is derived from it), its text, and the marker line that finds an earlier post of
/// it on the Graph path.
struct Comment<'a> {
    tenant: &'a str,
    key: &'a str,
    text: String,
    marker: String,
}

/// What one write attempt gave.
#[derive(Debug)]
pub enum Written {
    Ok(String),
    /// `retry`: whether a later attempt may succeed (throttling, outage, a permission an
    /// operator grants); otherwise the incident is unwritable (gone, no usable id).
    Failed {
        error: String,
        retry: bool,
    },
}

/// Writes case outcomes onto incidents through the configured path.
pub struct IncidentCommenter {
    path: CommentPath,
    arm: Option<ArmClient>,
    graph: Arc<GraphClient>,
    written: AtomicUsize,
    failed: AtomicUsize,
    unwritable: AtomicUsize,
}

impl IncidentCommenter {
    /// Comments through Azure Resource Manager.
    pub fn arm(arm: ArmClient, graph: Arc<GraphClient>) -> Self {
        Self::with(CommentPath::Arm, Some(arm), graph)
    }

    /// Comments through Microsoft Graph (`security/incidents`).
    pub fn graph(graph: Arc<GraphClient>) -> Self {
        Self::with(CommentPath::Graph, None, graph)
    }

    fn with(path: CommentPath, arm: Option<ArmClient>, graph: Arc<GraphClient>) -> Self {
        Self {
            path,
            arm,
            graph,
            written: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            unwritable: AtomicUsize::new(0),
        }
    }

    /// The configured one (`RR_INCIDENT_COMMENTS`, `RR_ARM_BASE_URL`), using the application
    /// and credential of `graph`; `None` when write-back is off.
    pub fn from_config(config: &Config, graph: &Arc<GraphClient>) -> Option<Self> {
        match config.incident_comments? {
            CommentPath::Graph => Some(Self::graph(graph.clone())),
            CommentPath::Arm => {
                let tokens = Arc::new(graph.tokens().with_scope(ARM_SCOPE));
                let arm = ArmClient::new(
                    reqwest::Client::new(),
                    &config.arm_base_url,
                    tokens,
                    RetryPolicy::default(),
                );
                Some(Self::arm(arm, graph.clone()))
            }
        }
    }

    /// The path comments take.
    pub fn path(&self) -> CommentPath {
        self.path
    }

    /// Counts since start.
    pub fn counts(&self) -> CommentCounts {
        CommentCounts {
            written: self.written.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            unwritable: self.unwritable.load(Ordering::Relaxed),
        }
    }

    /// Writes `case`'s outcome `outcome` onto `incident`.
    async fn write(&self, case: &Case, incident: &IncidentRef, outcome: &str) -> Written {
        let comment = Comment {
            tenant: &case.tenant_id,
            key: &case.case_id,
            text: comment_text(case, outcome),
            marker: marker(case, outcome),
        };
        self.put(&comment, incident, &case.case_id).await
    }

    /// Tells `incident` that its account `account` (signal `signal_id`) could not be acted on,
    /// and why: the same comment on every attempt. See
    /// [`crate::cases::incident::unresolved_comment_text`].
    pub async fn write_unresolved(
        &self,
        tenant: &str,
        incident: &IncidentRef,
        signal_id: &str,
        account: &str,
        reason: &str,
    ) -> Written {
        let key = unresolved_comment_key(signal_id);
        let comment = Comment {
            tenant,
            key: &key,
            text: unresolved_comment_text(signal_id, account, reason),
            marker: unresolved_marker(signal_id),
        };
        self.put(&comment, incident, signal_id).await
    }

    /// Writes `comment` on `incident` through the configured path, counted and logged under
    /// `about` (a case or signal id).
    async fn put(&self, comment: &Comment<'_>, incident: &IncidentRef, about: &str) -> Written {
        let written = match self.path {
            CommentPath::Arm => self.write_arm(comment, incident).await,
            CommentPath::Graph => self.write_graph(comment, incident).await,
        };
        let label = incident.label();
        match &written {
            Written::Ok(detail) => {
                self.written.fetch_add(1, Ordering::Relaxed);
                tracing::info!(about = %about, incident = %label, path = self.path.as_str(), %detail, "incident comment written");
            }
            Written::Failed { error, retry: true } => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(about = %about, incident = %label, path = self.path.as_str(), %error, "incident comment failed");
            }
            Written::Failed {
                error,
                retry: false,
            } => {
                self.unwritable.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(about = %about, incident = %label, path = self.path.as_str(), %error, "incident comment cannot be written");
            }
        }
        written
    }

    async fn write_arm(&self, comment: &Comment<'_>, incident: &IncidentRef) -> Written {
        let Some(arm) = &self.arm else {
            return Written::Failed {
                error: "no ARM client configured".into(),
                retry: true,
            };
        };
        let id = match incident.arm_incident_id() {
            Ok(id) => id,
            Err(error) => {
                return Written::Failed {
                    error,
                    retry: false,
                };
            }
        };
        let comment_guid = comment_id(comment.key);
        match arm
            .put_incident_comment(comment.tenant, id, &comment_guid, &comment.text)
            .await
        {
            Ok(status) => Written::Ok(format!(
                "comment {comment_guid} {}",
                if status == 201 { "created" } else { "replaced" }
            )),
            Err(e @ ArmError::NotFound { .. }) => Written::Failed {
                error: e.to_string(),
                retry: false,
            },
            Err(e) => Written::Failed {
                error: e.to_string(),
                retry: true,
            },
        }
    }

    async fn write_graph(&self, comment: &Comment<'_>, incident: &IncidentRef) -> Written {
        let id = match incident.defender_incident_id() {
            Ok(id) => segment(id),
            Err(error) => {
                return Written::Failed {
                    error,
                    retry: false,
                };
            }
        };
        let failed = |e: GraphError| Written::Failed {
            retry: !matches!(e, GraphError::NotFound { .. }),
            error: e.to_string(),
        };
        let tenant = comment.tenant;
        // Not idempotent: an earlier post whose answer was lost shows as our marker.
        let end = &comment.marker;
        match self
            .graph
            .send(
                tenant,
                Method::GET,
                &format!("/security/incidents/{id}"),
                None,
            )
            .await
        {
            Ok(incident) => {
                let posted = incident["comments"].as_array().is_some_and(|comments| {
                    comments
                        .iter()
                        .filter_map(|c| c["comment"].as_str())
                        .any(|c| c.contains(end.as_str()))
                });
                if posted {
                    return Written::Ok("already on the incident".into());
                }
            }
            Err(e) => return failed(e),
        }
        let body = json!({
            "@odata.type": "microsoft.graph.security.alertComment",
            "comment": comment.text,
        });
        match self
            .graph
            .send(
                tenant,
                Method::POST,
                &format!("/security/incidents/{id}/comments"),
                Some(&body),
            )
            .await
        {
            Ok(_) => Written::Ok("comment posted".into()),
            Err(e) => failed(e),
        }
    }
}

/// The incidents `signals` name, per case they merged into.
fn incidents_by_case(
    signals: &[(usize, RiskEvent)],
    case_of_signal: &[(usize, String)],
) -> HashMap<String, Vec<IncidentRef>> {
    let mut out: HashMap<String, Vec<IncidentRef>> = HashMap::new();
    for (index, case_id) in case_of_signal {
        let Some((_, signal)) = signals.iter().find(|(i, _)| i == index) else {
            continue;
        };
        if signal.source != EventSource::Sentinel {
            continue;
        }
        if let Some(incident) = signal
            .resource_data
            .as_ref()
            .and_then(IncidentRef::from_signal_context)
        {
            out.entry(case_id.clone()).or_default().push(incident);
        }
    }
    out
}

/// What a worker writes incident comments with: the commenter, the ledger its cases are in,
/// and its lease-holder id (the claim on a case's comments).
pub struct Writer<'a> {
    pub commenter: &'a IncidentCommenter,
    pub ledger: &'a Ledger,
    pub holder: &'a str,
}

/// After the worker saved its cases: registers the incidents this batch's signals came from on
/// their cases, writes the comments that are due, and keeps for retry the messages of cases
/// whose comment failed. Does nothing when write-back is off.
pub async fn write_back(
    writer: &Writer<'_>,
    signals: &[(usize, RiskEvent)],
    case_of_signal: &[(usize, String)],
    cases: &[String],
    outcomes: &mut HashMap<String, Disposition>,
) {
    let incidents = incidents_by_case(signals, case_of_signal);
    for case_id in cases {
        let found = incidents.get(case_id).map(Vec::as_slice).unwrap_or(&[]);
        let pending = write_case(writer, case_id, found).await;
        if let Some(reason) = pending
            && matches!(outcomes.get(case_id), Some(Disposition::Done(_)) | None)
        {
            outcomes.insert(case_id.clone(), Disposition::Retry(reason));
        }
    }
}

/// One case: register, claim, write, record. Returns why the message must be kept, if a
/// comment waits for a retry.
async fn write_case(
    writer: &Writer<'_>,
    case_id: &str,
    incidents: &[IncidentRef],
) -> Option<String> {
    let (commenter, ledger, holder) = (writer.commenter, writer.ledger, writer.holder);
    let path = commenter.path();
    let keep = |what: String| {
        tracing::error!(%case_id, error = %what, "incident write-back left for retry");
        Some(format!("case {case_id}: incident write-back {what}"))
    };
    // 1. Register the incidents and, when the case is settled and a comment is due, claim the
    //    right to write (a conditional write, so two workers never post the same comment).
    let mut claimed: Option<(Case, String, Vec<IncidentRef>)> = None;
    for _ in 0..MAX_CONFLICTS {
        let (mut case, version) = match ledger.case(case_id).await {
            Ok(Some(found)) => found,
            Ok(None) => return None,
            Err(e) => return keep(format!("could not read the case: {e}")),
        };
        let now = OffsetDateTime::now_utc();
        let mut changed = false;
        for incident in incidents {
            changed |= case.write_back.register(incident.clone());
        }
        let outcome = outcome_key(&case);
        let due: Vec<IncidentRef> = case
            .write_back
            .incidents
            .iter()
            .filter(|c| c.due(path, &outcome))
            .map(|c| c.incident.clone())
            .collect();
        let busy = |lease: &Option<Lease>| {
            lease
                .as_ref()
                .is_some_and(|l| l.holder != holder && l.is_held(now))
        };
        let writable = settled(&case)
            && !due.is_empty()
            && !busy(&case.lease)
            && !busy(&case.write_back.claim);
        if writable {
            case.write_back.claim = Some(Lease {
                holder: holder.to_owned(),
                until: now + CLAIM,
            });
        } else if !changed {
            return None;
        }
        match ledger.save_case(&case, version).await {
            Ok(Some(_)) if writable => {
                claimed = Some((case, outcome, due));
                break;
            }
            // Registered; the worker holding the case (or its comments) writes them.
            Ok(Some(_)) => return None,
            Ok(None) => continue,
            Err(e) => return keep(format!("could not be recorded: {e}")),
        }
    }
    let Some((snapshot, outcome, due)) = claimed else {
        return keep("could not claim the case: it kept changing".into());
    };
    // 2. Write (network; the case is not held meanwhile, only its comments).
    let mut results = Vec::with_capacity(due.len());
    for incident in due {
        let written = commenter.write(&snapshot, &incident, &outcome).await;
        results.push((incident, written));
    }
    // 3. Record what was written, on a fresh copy, and release the claim.
    for _ in 0..MAX_CONFLICTS {
        let (mut case, version) = match ledger.case(case_id).await {
            Ok(Some(found)) => found,
            Ok(None) => return None,
            Err(e) => return keep(format!("was done but not recorded: {e}")),
        };
        let now = OffsetDateTime::now_utc();
        for incident in incidents {
            case.write_back.register(incident.clone());
        }
        for (incident, written) in &results {
            let label = incident.label();
            let Some(comment) = case.write_back.get_mut(incident) else {
                continue;
            };
            let note = match written {
                Written::Ok(detail) => {
                    comment.wrote(path, &outcome, now);
                    format!(
                        "incident {label}: outcome written through {} ({detail})",
                        path.as_str()
                    )
                }
                Written::Failed { error, retry } => {
                    comment.failed(error, *retry);
                    if *retry {
                        format!("incident {label}: comment failed, kept for retry: {error}")
                    } else {
                        format!("incident {label}: comment cannot be written: {error}")
                    }
                }
            };
            case.note(now, note);
        }
        if case
            .write_back
            .claim
            .as_ref()
            .is_some_and(|c| c.holder == holder)
        {
            case.write_back.claim = None;
        }
        match ledger.save_case(&case, version).await {
            Ok(Some(_)) => return pending_reason(&case),
            Ok(None) => continue,
            Err(e) => return keep(format!("was done but not recorded: {e}")),
        }
    }
    keep("was done but not recorded: the case kept changing".into())
}

/// Why the case's work must be kept, when a comment failed and waits for a retry.
fn pending_reason(case: &Case) -> Option<String> {
    let errors: Vec<String> = case
        .write_back
        .incidents
        .iter()
        .filter(|c| c.state == CommentState::Failed)
        .map(|c| {
            format!(
                "{}: {}",
                c.incident.label(),
                c.last_error.as_deref().unwrap_or("-")
            )
        })
        .collect();
    (!errors.is_empty()).then(|| {
        format!(
            "case {}: incident comment failed, kept for retry ({})",
            case.case_id,
            errors.join("; ")
        )
    })
}
