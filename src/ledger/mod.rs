//! The ledger: idempotency (one event, one remediation) and the audit of every decision.
//! Modelled on Powertools idempotency: a conditional claim with an in-progress lease, a
//! payload hash, completion with the stored result, and expiry of old records.

pub mod dynamodb;
pub mod sqlite;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::event::RiskEvent;
use crate::pipeline::Report;

/// Where an event stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Accepted by the webhook, not yet processed.
    Received,
    /// A worker holds the claim until its lease ends.
    InProgress,
    /// Processed; the report is final.
    Completed,
    /// A transient failure; the next delivery may claim it again.
    Retry,
}

impl Status {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Received => "received",
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Retry => "retry",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "received" => Status::Received,
            "in_progress" => Status::InProgress,
            "completed" => Status::Completed,
            "retry" => Status::Retry,
            _ => return None,
        })
    }
}

/// One ledger record, as the audit shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub event_id: String,
    pub tenant_id: String,
    pub status: Status,
    pub payload_hash: String,
    pub attempts: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<RiskEvent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<Report>,
}

/// The answer to a claim.
#[derive(Debug, Clone)]
pub enum Claim {
    /// This worker may process the event; `previous` is the report of an earlier attempt
    /// that failed transiently (its completed actions are not repeated).
    Acquired { previous: Option<Box<Report>> },
    /// Already processed: nothing to do.
    Completed(Box<Entry>),
    /// Another worker holds an unexpired lease: retry later.
    InProgress,
    /// The id was seen with a different payload: refused, never processed.
    PayloadMismatch,
}

/// The ledger store failed; the caller answers 5xx or leaves the message for retry.
#[derive(Debug, thiserror::Error)]
#[error("ledger unavailable: {0}")]
pub struct LedgerError(pub String);

/// Port: the idempotency and audit store.
#[async_trait]
pub trait Ledger: Send + Sync {
    /// Records a received event (no-op if the id is already known).
    async fn accept(&self, event: &RiskEvent) -> Result<(), LedgerError>;
    /// Claims the event for processing for `lease`.
    async fn claim(&self, event: &RiskEvent, lease: Duration) -> Result<Claim, LedgerError>;
    /// Marks the event done with its report.
    async fn complete(&self, event_id: &str, report: &Report) -> Result<(), LedgerError>;
    /// Gives the claim back after a transient failure, keeping the partial report.
    async fn release(&self, event_id: &str, report: &Report) -> Result<(), LedgerError>;
    /// The most recently updated entries, newest first.
    async fn list(&self, limit: usize) -> Result<Vec<Entry>, LedgerError>;
}

/// SHA-256 (hex) of the event's canonical JSON without `detected_at` (which may be the
/// receive time), so that redeliveries of the same signal hash alike and a different payload
/// under the same id does not.
pub fn payload_hash(event: &RiskEvent) -> String {
    let mut value = serde_json::to_value(event).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.remove("detected_at");
    }
    let digest =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, value.to_string().as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// How long ledger records are kept (DynamoDB TTL; SQLite prunes on write).
pub const RECORD_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);

/// The behaviour every ledger adapter must have, run by each adapter's tests
/// (SQLite in unit tests, DynamoDB against moto in `tests/durable_pipeline.rs`).
#[doc(hidden)]
pub mod contract {
    use super::*;
    use crate::event::{EventSource, RiskLevel, Subject};

    pub fn event(id: &str) -> RiskEvent {
        RiskEvent {
            event_id: id.into(),
            tenant_id: "84bd8158-6d4d-4958-8b9f-9d6445542f95".into(),
            source: EventSource::GraphUser,
            subject: Subject::User {
                id: Some("6e7b768e-07e2-4810-8459-485f84f8f204".into()),
                upn: None,
            },
            risk_level: RiskLevel::High,
            detected_at: OffsetDateTime::now_utc(),
            source_id: "n-1".into(),
            resource_data: None,
        }
    }

    pub fn report(id: &str, retryable: bool) -> Report {
        Report {
            event_id: id.into(),
            tenant_id: "84bd8158-6d4d-4958-8b9f-9d6445542f95".into(),
            findings: None,
            outcome: None,
            error: retryable.then(|| "Graph still throttling after 5 attempts".into()),
            retryable,
            needs_operator: false,
        }
    }

    /// The behaviour every ledger must have.
    pub async fn run(ledger: &dyn Ledger, prefix: &str) {
        let id = format!("{prefix}-a");
        let e = event(&id);
        ledger.accept(&e).await.unwrap();
        ledger.accept(&e).await.unwrap();
        let listed = ledger.list(100).await.unwrap();
        let entry = listed.iter().find(|x| x.event_id == id).unwrap();
        assert_eq!(entry.status, Status::Received);

        let lease = Duration::from_secs(60);
        assert!(matches!(
            ledger.claim(&e, lease).await.unwrap(),
            Claim::Acquired { previous: None }
        ));
        assert!(matches!(
            ledger.claim(&e, lease).await.unwrap(),
            Claim::InProgress
        ));

        ledger.release(&id, &report(&id, true)).await.unwrap();
        match ledger.claim(&e, lease).await.unwrap() {
            Claim::Acquired {
                previous: Some(previous),
            } => assert!(previous.retryable),
            other => panic!("expected re-claim with previous report, got {other:?}"),
        }
        ledger.complete(&id, &report(&id, false)).await.unwrap();
        match ledger.claim(&e, lease).await.unwrap() {
            Claim::Completed(entry) => {
                assert_eq!(entry.status, Status::Completed);
                assert_eq!(entry.attempts, 2);
                assert!(!entry.report.unwrap().retryable);
            }
            other => panic!("expected completed, got {other:?}"),
        }

        // Same id, different payload.
        let mut tampered = e.clone();
        tampered.risk_level = RiskLevel::Low;
        assert!(matches!(
            ledger.claim(&tampered, lease).await.unwrap(),
            Claim::PayloadMismatch
        ));

        // A lease that ran out may be taken over (a worker died mid-way).
        let id2 = format!("{prefix}-b");
        let e2 = event(&id2);
        assert!(matches!(
            ledger.claim(&e2, Duration::ZERO).await.unwrap(),
            Claim::Acquired { .. }
        ));
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(matches!(
            ledger.claim(&e2, lease).await.unwrap(),
            Claim::Acquired { .. }
        ));

        // Concurrent claims: exactly one wins.
        let id3 = format!("{prefix}-c");
        let e3 = event(&id3);
        let claims = futures_join(ledger, &e3, lease).await;
        let won = claims
            .iter()
            .filter(|c| matches!(c, Claim::Acquired { .. }))
            .count();
        assert_eq!(won, 1, "{claims:?}");
    }

    async fn futures_join(ledger: &dyn Ledger, e: &RiskEvent, lease: Duration) -> Vec<Claim> {
        let (a, b, c, d) = tokio::join!(
            ledger.claim(e, lease),
            ledger.claim(e, lease),
            ledger.claim(e, lease),
            ledger.claim(e, lease)
        );
        vec![a.unwrap(), b.unwrap(), c.unwrap(), d.unwrap()]
    }
}
