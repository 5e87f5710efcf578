//! Replay of saved events (raw Graph/Sentinel bodies or Lambda HTTP events) through the same
//! ingress checks, then the same ledger, cases and worker as live signals, inline. Sentinel
//! bodies are not re-authenticated: a saved file has no live signature, and the operator who
//! runs replay vouches for it.

use std::fmt;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::cases::Case;
use crate::config::Config;
use crate::event::RiskEvent;
use crate::ingress::graph::{GraphIngress, LifecycleNotice, handshake_token};
use crate::ingress::secrets::IngressSecrets;
use crate::ingress::sentinel;
use crate::ingress::validation_tokens::TokenVerifier;
use crate::queue::WorkItem;
use crate::respond::{Disposition, Worker};

/// Which ingress a saved event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SavedKind {
    GraphHandshake,
    GraphNotifications,
    Sentinel,
}

/// What replaying one file gave.
#[derive(Debug, Serialize)]
pub struct ReplaySummary {
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<SavedKind>,
    pub events: Vec<RiskEvent>,
    pub lifecycle: Vec<LifecycleNotice>,
    pub dropped: Vec<String>,
    /// What became of each signal, when replay runs the worker.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outcomes: Vec<SignalOutcome>,
    /// The cases the file's signals went to, as they stand after the replay.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cases: Vec<Case>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What became of one replayed signal.
#[derive(Debug, Serialize)]
pub struct SignalOutcome {
    pub signal_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub case_id: Option<String>,
    /// Done or kept for retry, and why.
    pub disposition: String,
    pub retry: bool,
}

/// What replay runs saved events against.
pub struct ReplayContext<'a> {
    pub config: &'a Config,
    pub secrets: &'a IngressSecrets,
    pub tokens: Option<&'a TokenVerifier>,
    /// The worker (cases, investigation, plan, remediation); `None` to stop after ingress.
    pub worker: Option<&'a Worker>,
}

impl ReplaySummary {
    fn new(file: &str, kind: Option<SavedKind>) -> Self {
        Self {
            file: file.to_owned(),
            kind,
            events: Vec::new(),
            lifecycle: Vec::new(),
            dropped: Vec::new(),
            outcomes: Vec::new(),
            cases: Vec::new(),
            error: None,
        }
    }

    fn failed(file: &str, error: impl Into<String>) -> Self {
        Self {
            error: Some(error.into()),
            ..Self::new(file, None)
        }
    }
}

/// A saved file, unwrapped from its Lambda HTTP envelope if it has one.
struct Saved {
    kind: SavedKind,
    body: Vec<u8>,
}

fn classify(text: &str) -> Result<Saved, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    if value.get("requestContext").is_some() {
        let request = lambda_http::request::from_str(text)
            .map_err(|e| format!("not a Lambda HTTP event: {e}"))?;
        let path = request.uri().path().to_owned();
        let body = request.body().to_vec();
        return match path.as_str() {
            "/graph/notifications" | "/graph/lifecycle" => {
                let kind = if handshake_token(request.uri().query()).is_some() {
                    SavedKind::GraphHandshake
                } else {
                    SavedKind::GraphNotifications
                };
                Ok(Saved { kind, body })
            }
            "/sentinel/alerts" => Ok(Saved {
                kind: SavedKind::Sentinel,
                body,
            }),
            other => Err(format!("no route for path {other}")),
        };
    }
    let kind = if value.get("value").is_some() {
        SavedKind::GraphNotifications
    } else {
        SavedKind::Sentinel
    };
    Ok(Saved {
        kind,
        body: text.as_bytes().to_vec(),
    })
}

/// Replays one saved file's text.
pub async fn replay_text(file: &str, text: &str, ctx: &ReplayContext<'_>) -> ReplaySummary {
    let mut summary = ingest(file, text, ctx).await;
    if let Some(worker) = ctx.worker
        && !summary.events.is_empty()
    {
        if let Err(e) = worker.ledger.keep_signals(&summary.events).await {
            summary.error = Some(format!("signals could not be kept: {e}"));
            return summary;
        }
        let items: Vec<WorkItem> = summary.events.iter().cloned().map(WorkItem::Risk).collect();
        let dispositions = worker.handle_batch(&items).await;
        for (event, disposition) in summary.events.iter().zip(dispositions) {
            let case_id = worker
                .ledger
                .signal(&event.event_id)
                .await
                .ok()
                .flatten()
                .and_then(|r| r.case_id);
            let (text, retry) = match disposition {
                Disposition::Done(why) => (why, false),
                Disposition::Retry(why) => (why, true),
            };
            if let Some(id) = &case_id
                && !summary.cases.iter().any(|c| c.case_id == *id)
                && let Ok(Some((case, _))) = worker.ledger.case(id).await
            {
                summary.cases.push(case);
            }
            summary.outcomes.push(SignalOutcome {
                signal_id: event.event_id.clone(),
                case_id,
                disposition: text,
                retry,
            });
        }
    }
    summary
}

async fn ingest(file: &str, text: &str, ctx: &ReplayContext<'_>) -> ReplaySummary {
    let (config, secrets, tokens) = (ctx.config, ctx.secrets, ctx.tokens);
    let saved = match classify(text) {
        Ok(saved) => saved,
        Err(e) => return ReplaySummary::failed(file, e),
    };
    let mut summary = ReplaySummary::new(file, Some(saved.kind));
    match saved.kind {
        SavedKind::GraphHandshake => {}
        SavedKind::GraphNotifications => {
            let ingress = GraphIngress {
                config,
                secrets,
                tokens,
                deadline: tokio::time::Instant::now() + config.jwks.wait,
            };
            match ingress.process(&saved.body).await {
                Ok(outcome) => {
                    summary.events = outcome.events;
                    summary.lifecycle = outcome.lifecycle;
                    summary.dropped = outcome
                        .dropped
                        .iter()
                        .map(|d| format!("notification {}: {}", d.index, d.reason))
                        .collect();
                }
                Err(e) => summary.error = Some(e.to_string()),
            }
        }
        SavedKind::Sentinel => match sentinel::parse(&saved.body, config, None) {
            Ok(outcome) => {
                // The operator replaying a saved alert vouches for it, within the allowed
                // tenants (a saved payload carries no caller).
                let origin = crate::event::Origin {
                    via: crate::event::OriginKind::Replay,
                    by: "an operator's replay".into(),
                    tenants: config.allowed_tenants.clone(),
                };
                summary.events = outcome
                    .events
                    .into_iter()
                    .map(|mut e| {
                        e.origin = Some(origin.clone());
                        e
                    })
                    .collect();
                summary.dropped = outcome.dropped.iter().map(ToString::to_string).collect();
            }
            Err(e) => summary.error = Some(e.to_string()),
        },
    }
    summary
}

/// Replays a file from disk.
pub async fn replay_file(path: &Path, ctx: &ReplayContext<'_>) -> ReplaySummary {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => replay_text(&file, &text, ctx).await,
        Err(e) => ReplaySummary::failed(&file, format!("cannot read: {e}")),
    }
}

impl fmt::Display for ReplaySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self
            .kind
            .map(|k| format!("{k:?}"))
            .unwrap_or_else(|| "unreadable".into());
        writeln!(f, "{}  [{kind}]", self.file)?;
        if let Some(error) = &self.error {
            writeln!(f, "  error: {error}")?;
        }
        for event in &self.events {
            let who = match &event.subject {
                crate::event::Subject::User { id, upn } => {
                    upn.clone().or_else(|| id.clone()).unwrap_or_default()
                }
                crate::event::Subject::SecurityAlert { id } => format!("alert {id}"),
            };
            writeln!(
                f,
                "  event {}  {:?}  tenant {}  {who}  risk {:?}",
                event.event_id, event.source, event.tenant_id, event.risk_level
            )?;
        }
        for notice in &self.lifecycle {
            writeln!(
                f,
                "  lifecycle {:?}  subscription {}",
                notice.kind, notice.subscription_id
            )?;
        }
        for reason in &self.dropped {
            writeln!(f, "  dropped: {reason}")?;
        }
        for outcome in &self.outcomes {
            writeln!(
                f,
                "  signal {} -> {}{}",
                outcome.signal_id,
                outcome
                    .case_id
                    .as_deref()
                    .map_or("no case".to_owned(), |c| format!("case {c}")),
                if outcome.retry {
                    format!(" (kept for retry: {})", outcome.disposition)
                } else {
                    format!(" ({})", outcome.disposition)
                }
            )?;
        }
        for case in &self.cases {
            write!(f, "{}", crate::respond::report::CaseReport(case))?;
        }
        if self.kind == Some(SavedKind::GraphHandshake) {
            writeln!(f, "  handshake: nothing to replay")?;
        }
        Ok(())
    }
}
