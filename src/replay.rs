//! Replay of saved events (raw Graph/Sentinel bodies or Lambda HTTP events) through the same
//! ingress checks, inline. Sentinel bodies are not re-authenticated: a saved file has no live
//! signature, and the operator who runs replay vouches for it.

use std::fmt;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::config::Config;
use crate::event::RiskEvent;
use crate::ingress::graph::{GraphIngress, LifecycleNotice, handshake_token};
use crate::ingress::sentinel;
use crate::ingress::validation_tokens::TokenVerifier;
use crate::pipeline::{Pipeline, Report};
use crate::secrets::IngressSecrets;

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
    /// Investigation, plan and outcome per event, when replay runs the pipeline.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reports: Vec<Report>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What replay runs saved events against.
pub struct ReplayContext<'a> {
    pub config: &'a Config,
    pub secrets: &'a IngressSecrets,
    pub tokens: Option<&'a TokenVerifier>,
    /// The pipeline (investigate, plan, remediate); `None` to stop after ingress.
    pub pipeline: Option<&'a Pipeline>,
}

impl ReplaySummary {
    fn new(file: &str, kind: Option<SavedKind>) -> Self {
        Self {
            file: file.to_owned(),
            kind,
            events: Vec::new(),
            lifecycle: Vec::new(),
            dropped: Vec::new(),
            reports: Vec::new(),
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
    if let Some(pipeline) = ctx.pipeline {
        for event in &summary.events {
            summary.reports.push(pipeline.process(event).await);
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
        SavedKind::Sentinel => match sentinel::parse(&saved.body, config) {
            Ok(outcome) => {
                summary.events = outcome.events;
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
        for report in &self.reports {
            write!(f, "  event {}: ", report.event_id)?;
            if let Some(error) = &report.error {
                writeln!(f, "not investigated: {error}")?;
                continue;
            }
            if let Some(findings) = &report.findings {
                let risk = findings.risky_user.as_ref();
                write!(
                    f,
                    "user {} riskLevel {} riskState {}, {} blocked sign-in(s); ",
                    findings
                        .user_principal_name
                        .as_deref()
                        .unwrap_or(&findings.user_id),
                    risk.and_then(|r| r.risk_level.as_deref()).unwrap_or("-"),
                    risk.and_then(|r| r.risk_state.as_deref()).unwrap_or("-"),
                    findings.blocked_sign_ins.len()
                )?;
            }
            if let Some(outcome) = &report.outcome {
                match (&outcome.plan.rule, &outcome.plan.reason) {
                    (Some(rule), _) => writeln!(f, "{:?} by rule {rule:?}", outcome.mode)?,
                    (None, Some(reason)) => writeln!(f, "nothing to do: {reason}")?,
                    (None, None) => writeln!(f, "nothing to do")?,
                }
                for action in &outcome.actions {
                    writeln!(f, "    {:?}: {:?}", action.action, action.status)?;
                }
            }
        }
        if self.kind == Some(SavedKind::GraphHandshake) {
            writeln!(f, "  handshake: nothing to replay")?;
        }
        Ok(())
    }
}
