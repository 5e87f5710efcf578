//! The ledger: signals one by one, cases, per-user and per-tenant records, in one keyed store.
//!
//! The port is [`Store`], a versioned document store (optimistic concurrency: every write names
//! the version it replaces), with adapters beside it: [`sqlite`] (local server, replay, CLI) and
//! [`dynamodb`] (Lambda). [`Ledger`] gives the domain's records typed access over any store.
//!
//! Keys: `signal#{id}`, `case#{id}`, `user#{tenant}#{user}`, `tenant#{tenant}#{what}`,
//! `subscription#{tenant}#{id}` (the Graph subscriptions created in each tenant),
//! `intent#{case}#{action}` (a temporary password sealed until it is delivered), the
//! Standard Webhooks replay guard's `webhook#{id}`, and (on a ledger with a work index: the
//! local server's SQLite file) `pending#case#{id}` and `pending#signal#{id}`, which mark the
//! cases and signals the local retries must look at, however old.

pub mod dynamodb;
pub mod sqlite;

use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::cases::Case;
use crate::event::RiskEvent;

/// How long signals are kept.
pub const SIGNAL_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);
/// How long cases and per-user records are kept after their last change (a user's latest case
/// is what tells a new risk episode from an old one).
pub const CASE_RETENTION: Duration = Duration::from_secs(400 * 24 * 3600);
/// Largest document written (DynamoDB's item limit is 400 KB; ours stay far below).
pub const MAX_DOCUMENT_BYTES: usize = 200 * 1024;

/// The store failed or refused; the caller answers 5xx or leaves the work for retry.
#[derive(Debug, Clone, thiserror::Error)]
#[error("ledger unavailable: {0}")]
pub struct LedgerError(pub String);

/// A stored document and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub key: String,
    pub version: u64,
    /// JSON.
    pub doc: String,
    /// Unix seconds of the last write.
    pub updated_at: i64,
}

/// A document to create if its key is new.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewItem {
    pub key: String,
    pub doc: String,
    /// Unix seconds after which the store may delete it.
    pub expires_at: Option<i64>,
}

/// Port: a keyed store of versioned JSON documents.
#[async_trait]
pub trait Store: Send + Sync {
    /// The document under `key`.
    async fn get(&self, key: &str) -> Result<Option<Stored>, LedgerError>;
    /// The documents under `keys` that exist (any order).
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Stored>, LedgerError>;
    /// Creates every item whose key does not exist yet, leaving existing ones untouched, in as
    /// few writes as the store allows (one transaction on SQLite, transactions of up to 100 on
    /// DynamoDB). Returns how many were created. Either every new item is kept or an error is
    /// returned.
    async fn create_all(&self, items: &[NewItem]) -> Result<usize, LedgerError>;
    /// Writes every item, replacing what is under its key (for documents that only this kind of
    /// write touches, like the risk view), in as few writes as the store allows.
    async fn put_all(&self, items: &[NewItem]) -> Result<(), LedgerError>;
    /// Writes `doc` under `key` if the stored version is `expected` (0: the key must not
    /// exist). Returns the new version, or `None` if another writer got there first.
    async fn put(
        &self,
        key: &str,
        doc: &str,
        expected: u64,
        expires_at: Option<i64>,
    ) -> Result<Option<u64>, LedgerError>;
    /// Deletes `key` if its version is `expected`; returns whether it did.
    async fn delete(&self, key: &str, expected: u64) -> Result<bool, LedgerError>;
    /// Documents whose key starts with `prefix`, most recently written first.
    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<Stored>, LedgerError>;
}

/// A signal as the ledger keeps it: what arrived, when, and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalRecord {
    pub signal: RiskEvent,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// The case it was merged into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case_id: Option<String>,
    /// What the worker did with it, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disposition: Option<String>,
}

/// What the ledger remembers about one user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub tenant_id: String,
    pub user_id: String,
    /// The user's latest case (open or closed): the one new signals are placed against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_case: Option<String>,
    /// When we last reset the user's password (the cooldown rail).
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub last_reset_at: Option<OffsetDateTime>,
    /// The case that reset it (its own retries are not held by the cooldown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reset_case: Option<String>,
}

impl UserRecord {
    /// The user's last automatic password reset by a case other than `case_id`.
    pub fn last_reset_by_another(&self, case_id: &str) -> Option<OffsetDateTime> {
        match &self.last_reset_case {
            Some(by) if by == case_id => None,
            _ => self.last_reset_at,
        }
    }
}

/// A SOC mail (one case's, or a digest of several) that Graph accepted, recorded right after
/// (`tenant#{tenant}#socmail#{mail id}`): one write, however many cases the mail covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocMailRecord {
    pub mail_id: String,
    pub case_ids: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub sent_at: OffsetDateTime,
}

fn soc_mail_key(tenant_id: &str, mail_id: &str) -> String {
    format!("tenant#{tenant_id}#socmail#{mail_id}")
}

fn subscription_key(tenant_id: &str, subscription_id: &str) -> String {
    format!(
        "subscription#{}#{}",
        tenant_id.to_ascii_lowercase(),
        subscription_id.to_ascii_lowercase()
    )
}

/// A Graph subscription this deployment created, and the tenant it was created in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionRecord {
    pub tenant_id: String,
    pub subscription_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub recorded_at: OffsetDateTime,
}

/// What the cooldown rail answered a case about to reset a user's password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetClaim {
    /// The reset may go; the user's record now names this case.
    Granted,
    /// Another case reset the user within the cooldown.
    Held {
        last_reset_at: OffsetDateTime,
        by_case: String,
    },
}

/// A temporary password sealed between its `PATCH` and its delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SealedIntent {
    sealed: String,
}

/// How long a sealed password is kept if nobody delivers it (its case is long settled by then).
const SEALED_INTENT_RETENTION: Duration = Duration::from_secs(14 * 24 * 3600);

fn intent_key(case_id: &str, action: usize) -> String {
    format!("intent#{case_id}#{action}")
}

/// A tenant's enforced cases within the last hour (the blast-radius rail).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlastRecord {
    /// (unix seconds, case id) of enforced cases admitted in the last hour.
    #[serde(default)]
    pub admitted: Vec<(i64, String)>,
    /// When the limit was last announced (set once the alert was sent).
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub alerted_at: Option<OffsetDateTime>,
    /// A worker is sending the alert until then (so concurrent refusals send one).
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub alert_claimed_until: Option<OffsetDateTime>,
}

impl BlastRecord {
    /// Whether the limit must still be announced (no alert sent in the window, nobody
    /// sending one now).
    fn alert_due(&self, now: OffsetDateTime) -> bool {
        self.alerted_at
            .is_none_or(|t| (now - t).whole_seconds() >= BLAST_WINDOW_SECONDS)
            && self.alert_claimed_until.is_none_or(|t| t <= now)
    }
}

/// The blast-radius window.
const BLAST_WINDOW_SECONDS: i64 = 3600;
/// How long a worker may take to send the blast-radius alert it claimed.
const BLAST_ALERT_CLAIM: time::Duration = time::Duration::minutes(2);

/// The answer of the blast-radius rail for one case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// Over the limit; `announce` is true when this caller claimed the window's one alert: it
    /// sends it, then reports with [`Ledger::blast_alert_done`].
    Refused {
        announce: bool,
    },
}

/// A mark of the work index: a case or signal the local retries look at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingMark {
    /// Times the local retries took it up (signals: the backoff).
    #[serde(default)]
    pub attempts: u32,
    /// When they last did.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub last_at: Option<OffsetDateTime>,
}

/// What a work-index key marks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marked {
    Case(String),
    Signal(String),
}

/// A work-index entry as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEntry {
    pub marked: Marked,
    pub mark: PendingMark,
    pub key: String,
    pub version: u64,
    /// Unix seconds of the mark's last write.
    pub written_at: i64,
}

const PENDING_CASE: &str = "pending#case#";
const PENDING_SIGNAL: &str = "pending#signal#";

/// Typed access to the domain's records over a [`Store`].
#[derive(Clone)]
pub struct Ledger {
    store: std::sync::Arc<dyn Store>,
    /// Whether the ledger keeps the work index (`pending#…`) for local retries.
    work_index: bool,
}

fn err(e: impl std::fmt::Display) -> LedgerError {
    LedgerError(e.to_string())
}

fn unix(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

fn expiry(retention: Duration) -> Option<i64> {
    Some(unix(OffsetDateTime::now_utc()) + retention.as_secs() as i64)
}

/// Most optimistic-concurrency rounds before giving up (then the work is retried later).
const MAX_CONFLICTS: usize = 32;

impl Ledger {
    /// A ledger over `store`.
    pub fn new(store: std::sync::Arc<dyn Store>) -> Self {
        Self {
            store,
            work_index: false,
        }
    }

    /// This ledger, also keeping the work index: every signal kept until it is settled and
    /// every case while it waits for the worker are marked under `pending#`, so the local
    /// retries find them however much else changed since (the local server's ledger; Lambda
    /// has SQS redelivery and no grant on those keys).
    pub fn with_work_index(mut self) -> Self {
        self.work_index = true;
        self
    }

    /// Whether this ledger keeps the work index.
    pub fn keeps_work_index(&self) -> bool {
        self.work_index
    }

    /// The underlying store.
    pub fn store(&self) -> &std::sync::Arc<dyn Store> {
        &self.store
    }

    fn decode<T: DeserializeOwned>(stored: &Stored) -> Result<T, LedgerError> {
        serde_json::from_str(&stored.doc)
            .map_err(|e| LedgerError(format!("{} is not readable: {e}", stored.key)))
    }

    fn encode<T: Serialize>(value: &T) -> Result<String, LedgerError> {
        let doc = serde_json::to_string(value).map_err(err)?;
        if doc.len() > MAX_DOCUMENT_BYTES {
            return Err(LedgerError(format!(
                "document of {} bytes is over the {MAX_DOCUMENT_BYTES}-byte limit",
                doc.len()
            )));
        }
        Ok(doc)
    }

    /// Keeps accepted signals (intake): one write for the batch (with the work index, their
    /// marks in the same write); redeliveries are no-ops. Returns how many items were created.
    pub async fn keep_signals(&self, signals: &[RiskEvent]) -> Result<usize, LedgerError> {
        let now = OffsetDateTime::now_utc();
        let mut items = Vec::with_capacity(signals.len());
        for signal in signals {
            let record = SignalRecord {
                signal: signal.clone(),
                received_at: now,
                case_id: None,
                disposition: None,
            };
            items.push(NewItem {
                key: format!("signal#{}", signal.event_id),
                doc: Self::encode(&record)?,
                expires_at: expiry(SIGNAL_RETENTION),
            });
        }
        if !self.work_index {
            return self.store.create_all(&items).await;
        }
        // The marks first, in the same write: a kept signal always has one (a mark without its
        // signal, or of a redelivered signal settled long ago, is cleared by the local retries).
        let mut all: Vec<NewItem> = signals
            .iter()
            .map(|s| self.mark_item(format!("{PENDING_SIGNAL}{}", s.event_id)))
            .collect::<Result<_, _>>()?;
        all.extend(items);
        self.store.create_all(&all).await
    }

    /// A signal's record.
    pub async fn signal(&self, signal_id: &str) -> Result<Option<SignalRecord>, LedgerError> {
        match self.store.get(&format!("signal#{signal_id}")).await? {
            Some(stored) => Ok(Some(Self::decode(&stored)?)),
            None => Ok(None),
        }
    }

    /// Records what became of a signal (creating its record if intake did not, e.g. replay).
    pub async fn settle_signal(
        &self,
        signal: &RiskEvent,
        case_id: Option<&str>,
        disposition: &str,
    ) -> Result<(), LedgerError> {
        let key = format!("signal#{}", signal.event_id);
        for _ in 0..MAX_CONFLICTS {
            let (mut record, version) = match self.store.get(&key).await? {
                Some(stored) => (Self::decode::<SignalRecord>(&stored)?, stored.version),
                None => (
                    SignalRecord {
                        signal: signal.clone(),
                        received_at: OffsetDateTime::now_utc(),
                        case_id: None,
                        disposition: None,
                    },
                    0,
                ),
            };
            if record.case_id.as_deref() == case_id
                && record.disposition.as_deref() == Some(disposition)
            {
                return Ok(());
            }
            record.case_id = case_id.map(str::to_owned);
            record.disposition = Some(disposition.to_owned());
            let doc = Self::encode(&record)?;
            if self
                .store
                .put(&key, &doc, version, expiry(SIGNAL_RETENTION))
                .await?
                .is_some()
            {
                if self.work_index {
                    self.clear_mark(&format!("{PENDING_SIGNAL}{}", signal.event_id))
                        .await?;
                }
                return Ok(());
            }
        }
        Err(LedgerError(format!(
            "signal {} kept changing",
            signal.event_id
        )))
    }

    /// A case and its version.
    pub async fn case(&self, case_id: &str) -> Result<Option<(Case, u64)>, LedgerError> {
        match self.store.get(&format!("case#{case_id}")).await? {
            Some(stored) => Ok(Some((Self::decode(&stored)?, stored.version))),
            None => Ok(None),
        }
    }

    /// Writes `case` over `version` (0: new); `None` if it changed meanwhile. On a ledger
    /// with a work index, a case left waiting for the worker is marked (after the write: the
    /// local retries clear a mark only after reading the case settled, then read it again).
    pub async fn save_case(&self, case: &Case, version: u64) -> Result<Option<u64>, LedgerError> {
        let doc = Self::encode(case)?;
        let saved = self
            .store
            .put(
                &format!("case#{}", case.case_id),
                &doc,
                version,
                expiry(CASE_RETENTION),
            )
            .await?;
        if saved.is_some() && self.work_index && case.awaits_worker() {
            self.mark_case(&case.case_id).await?;
        }
        Ok(saved)
    }

    fn mark_item(&self, key: String) -> Result<NewItem, LedgerError> {
        Ok(NewItem {
            key,
            doc: Self::encode(&PendingMark::default())?,
            expires_at: expiry(CASE_RETENTION),
        })
    }

    /// Marks a case for the local retries (kept if marked already).
    pub async fn mark_case(&self, case_id: &str) -> Result<(), LedgerError> {
        let item = self.mark_item(format!("{PENDING_CASE}{case_id}"))?;
        self.store.create_all(&[item]).await.map(drop)
    }

    async fn clear_mark(&self, key: &str) -> Result<(), LedgerError> {
        if let Some(stored) = self.store.get(key).await? {
            self.store.delete(key, stored.version).await?;
        }
        Ok(())
    }

    /// The work index: every marked case and signal (marks are few: they go when their case
    /// or signal is settled).
    pub async fn pending_marks(&self) -> Result<Vec<PendingEntry>, LedgerError> {
        let stored = self.store.list("pending#", usize::MAX).await?;
        let mut out = Vec::with_capacity(stored.len());
        for item in stored {
            let marked = if let Some(id) = item.key.strip_prefix(PENDING_CASE) {
                Marked::Case(id.to_owned())
            } else if let Some(id) = item.key.strip_prefix(PENDING_SIGNAL) {
                Marked::Signal(id.to_owned())
            } else {
                continue;
            };
            out.push(PendingEntry {
                marked,
                mark: Self::decode(&item)?,
                key: item.key,
                version: item.version,
                written_at: item.updated_at,
            });
        }
        Ok(out)
    }

    /// Removes a mark if it is still the version listed; returns whether it did.
    pub async fn unmark(&self, entry: &PendingEntry) -> Result<bool, LedgerError> {
        self.store.delete(&entry.key, entry.version).await
    }

    /// Records that the local retries took the marked item up at `now`.
    pub async fn touch_mark(
        &self,
        entry: &PendingEntry,
        now: OffsetDateTime,
    ) -> Result<bool, LedgerError> {
        let mark = PendingMark {
            attempts: entry.mark.attempts.saturating_add(1),
            last_at: Some(now),
        };
        let doc = Self::encode(&mark)?;
        Ok(self
            .store
            .put(&entry.key, &doc, entry.version, expiry(CASE_RETENTION))
            .await?
            .is_some())
    }

    /// Deletes a case that was created but lost the race to become the user's case.
    pub async fn discard_case(&self, case_id: &str, version: u64) -> Result<bool, LedgerError> {
        self.store.delete(&format!("case#{case_id}"), version).await
    }

    /// The user's record and its version (a default record, version 0, if none).
    pub async fn user(
        &self,
        tenant_id: &str,
        user_id: &str,
    ) -> Result<(UserRecord, u64), LedgerError> {
        match self
            .store
            .get(&format!("user#{tenant_id}#{user_id}"))
            .await?
        {
            Some(stored) => Ok((Self::decode(&stored)?, stored.version)),
            None => Ok((
                UserRecord {
                    tenant_id: tenant_id.to_owned(),
                    user_id: user_id.to_owned(),
                    ..UserRecord::default()
                },
                0,
            )),
        }
    }

    /// Writes the user's record over `version`; `None` if it changed meanwhile.
    pub async fn save_user(
        &self,
        record: &UserRecord,
        version: u64,
    ) -> Result<Option<u64>, LedgerError> {
        let doc = Self::encode(record)?;
        self.store
            .put(
                &format!("user#{}#{}", record.tenant_id, record.user_id),
                &doc,
                version,
                expiry(CASE_RETENTION),
            )
            .await
    }

    /// The cooldown rail as a claim: one conditional write on the user's record, so two cases
    /// can never both reset the user within `cooldown` (no read-then-act). Granted when no
    /// other case reset the user within `cooldown` (a case's own earlier reset does not count;
    /// `forced`: a person approved this reset, which overrides the rail); the claim records
    /// `case_id` as the user's last reset at `now`.
    pub async fn claim_reset(
        &self,
        tenant_id: &str,
        user_id: &str,
        case_id: &str,
        cooldown: time::Duration,
        forced: bool,
        now: OffsetDateTime,
    ) -> Result<ResetClaim, LedgerError> {
        for _ in 0..MAX_CONFLICTS {
            let (mut record, version) = self.user(tenant_id, user_id).await?;
            if !forced
                && let Some(at) = record
                    .last_reset_by_another(case_id)
                    .filter(|at| now - *at < cooldown && *at - now < cooldown)
            {
                return Ok(ResetClaim::Held {
                    last_reset_at: at,
                    by_case: record.last_reset_case.clone().unwrap_or_default(),
                });
            }
            record.last_reset_at = Some(now);
            record.last_reset_case = Some(case_id.to_owned());
            if self.save_user(&record, version).await?.is_some() {
                return Ok(ResetClaim::Granted);
            }
        }
        Err(LedgerError(format!("user {user_id} kept changing")))
    }

    /// Keeps a temporary password sealed beside its case (`intent#{case}#{action}`) until it
    /// is delivered, for a worker that resumes the case after another stopped between the
    /// `PATCH` and the delivery. `sealed` is the sealed value (never the password itself).
    pub async fn keep_sealed_intent(
        &self,
        case_id: &str,
        action: usize,
        sealed: &str,
    ) -> Result<(), LedgerError> {
        let key = intent_key(case_id, action);
        let doc = Self::encode(&SealedIntent {
            sealed: sealed.to_owned(),
        })?;
        for _ in 0..MAX_CONFLICTS {
            // A retry of the same action (its delivery failed) replaces the earlier one.
            let version = self.store.get(&key).await?.map_or(0, |s| s.version);
            if self
                .store
                .put(&key, &doc, version, expiry(SEALED_INTENT_RETENTION))
                .await?
                .is_some()
            {
                return Ok(());
            }
        }
        Err(LedgerError(format!("{key} kept changing")))
    }

    /// The sealed value kept for `case_id`'s action `action`, if any.
    pub async fn sealed_intent(
        &self,
        case_id: &str,
        action: usize,
    ) -> Result<Option<String>, LedgerError> {
        match self.store.get(&intent_key(case_id, action)).await? {
            Some(stored) => Ok(Some(Self::decode::<SealedIntent>(&stored)?.sealed)),
            None => Ok(None),
        }
    }

    /// Forgets a delivered password's sealed copy.
    pub async fn forget_sealed_intent(
        &self,
        case_id: &str,
        action: usize,
    ) -> Result<(), LedgerError> {
        let key = intent_key(case_id, action);
        if let Some(stored) = self.store.get(&key).await? {
            self.store.delete(&key, stored.version).await?;
        }
        Ok(())
    }

    /// Records a password reset of the user by `case_id` (for the cooldown rail).
    pub async fn record_reset(
        &self,
        tenant_id: &str,
        user_id: &str,
        case_id: &str,
        at: OffsetDateTime,
    ) -> Result<(), LedgerError> {
        for _ in 0..MAX_CONFLICTS {
            let (mut record, version) = self.user(tenant_id, user_id).await?;
            record.last_reset_at = Some(at);
            record.last_reset_case = Some(case_id.to_owned());
            if self.save_user(&record, version).await?.is_some() {
                return Ok(());
            }
        }
        Err(LedgerError(format!("user {user_id} kept changing")))
    }

    /// Cases, most recently updated first.
    pub async fn cases(&self, limit: usize) -> Result<Vec<Case>, LedgerError> {
        let stored = self.store.list("case#", limit).await?;
        stored.iter().map(Self::decode).collect()
    }

    /// Signals, most recently updated first.
    pub async fn signals(&self, limit: usize) -> Result<Vec<SignalRecord>, LedgerError> {
        let stored = self.store.list("signal#", limit).await?;
        stored.iter().map(Self::decode).collect()
    }

    /// Finds a case by its id, or by the id of a signal merged into it.
    pub async fn find_case(&self, id: &str) -> Result<Option<(Case, u64)>, LedgerError> {
        if let Some(found) = self.case(id).await? {
            return Ok(Some(found));
        }
        match self.signal(id).await? {
            Some(SignalRecord {
                case_id: Some(case_id),
                ..
            }) => self.case(&case_id).await,
            _ => Ok(None),
        }
    }

    /// The blast-radius rail: admits `case_id` as one of the tenant's enforced cases of the
    /// last hour if fewer than `limit` were admitted (an admitted case stays admitted). A
    /// refusal claims the window's one alert if nobody sent or is sending it: the alert is
    /// marked sent only when [`Ledger::blast_alert_done`] says it was.
    pub async fn admit_enforced(
        &self,
        tenant_id: &str,
        case_id: &str,
        limit: u32,
        now: OffsetDateTime,
    ) -> Result<Admission, LedgerError> {
        let key = format!("tenant#{tenant_id}#blast");
        for _ in 0..MAX_CONFLICTS {
            let (mut record, version) = match self.store.get(&key).await? {
                Some(stored) => (Self::decode::<BlastRecord>(&stored)?, stored.version),
                None => (BlastRecord::default(), 0),
            };
            let now_s = unix(now);
            record
                .admitted
                .retain(|(at, _)| now_s - at < BLAST_WINDOW_SECONDS);
            if record.admitted.iter().any(|(_, id)| id == case_id) {
                return Ok(Admission::Admitted);
            }
            let admission = if record.admitted.len() < limit as usize {
                record.admitted.push((now_s, case_id.to_owned()));
                Admission::Admitted
            } else {
                let announce = record.alert_due(now);
                if announce {
                    record.alert_claimed_until = Some(now + BLAST_ALERT_CLAIM);
                }
                Admission::Refused { announce }
            };
            if admission == (Admission::Refused { announce: false }) {
                return Ok(admission);
            }
            let doc = Self::encode(&record)?;
            if self.store.put(&key, &doc, version, None).await?.is_some() {
                return Ok(admission);
            }
        }
        Err(LedgerError(format!(
            "tenant {tenant_id} blast record kept changing"
        )))
    }

    /// Records that the subscriptions `ids` were created in `tenant_id` (one write; those
    /// recorded already are kept as they are: a subscription's tenant never changes).
    pub async fn record_subscriptions(
        &self,
        tenant_id: &str,
        ids: &[&str],
    ) -> Result<(), LedgerError> {
        let now = OffsetDateTime::now_utc();
        let items = ids
            .iter()
            .map(|id| {
                Ok(NewItem {
                    key: subscription_key(tenant_id, id),
                    doc: Self::encode(&SubscriptionRecord {
                        tenant_id: tenant_id.to_ascii_lowercase(),
                        subscription_id: id.to_ascii_lowercase(),
                        recorded_at: now,
                    })?,
                    expires_at: None,
                })
            })
            .collect::<Result<Vec<_>, LedgerError>>()?;
        self.store.create_all(&items).await.map(drop)
    }

    /// Of the (tenant, subscription) pairs, those recorded as created in that tenant.
    pub async fn recorded_subscriptions(
        &self,
        pairs: &[(String, String)],
    ) -> Result<std::collections::HashSet<(String, String)>, LedgerError> {
        if pairs.is_empty() {
            return Ok(Default::default());
        }
        let keys: Vec<String> = pairs.iter().map(|(t, s)| subscription_key(t, s)).collect();
        let found: std::collections::HashSet<String> = self
            .store
            .get_many(&keys)
            .await?
            .into_iter()
            .map(|s| s.key)
            .collect();
        Ok(pairs
            .iter()
            .filter(|(t, s)| found.contains(&subscription_key(t, s)))
            .cloned()
            .collect())
    }

    /// Records that Graph accepted SOC mail `mail_id`, covering `case_ids`.
    pub async fn record_soc_mail(
        &self,
        tenant_id: &str,
        record: &SocMailRecord,
    ) -> Result<(), LedgerError> {
        let key = soc_mail_key(tenant_id, &record.mail_id);
        let doc = Self::encode(record)?;
        self.store
            .put(&key, &doc, 0, expiry(CASE_RETENTION))
            .await
            .map(drop)
    }

    /// The SOC mails among `mail_ids` that were recorded as sent.
    pub async fn soc_mails_sent(
        &self,
        tenant_id: &str,
        mail_ids: &[String],
    ) -> Result<Vec<SocMailRecord>, LedgerError> {
        if mail_ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = mail_ids
            .iter()
            .map(|id| soc_mail_key(tenant_id, id))
            .collect();
        self.store
            .get_many(&keys)
            .await?
            .iter()
            .map(Self::decode::<SocMailRecord>)
            .collect()
    }

    /// Claims the tenant's blast-radius alert for a case whose alert failed before: true if
    /// the caller must send it now, false if it was sent (or is being sent) meanwhile.
    pub async fn claim_blast_alert(
        &self,
        tenant_id: &str,
        now: OffsetDateTime,
    ) -> Result<bool, LedgerError> {
        let key = format!("tenant#{tenant_id}#blast");
        for _ in 0..MAX_CONFLICTS {
            let (mut record, version) = match self.store.get(&key).await? {
                Some(stored) => (Self::decode::<BlastRecord>(&stored)?, stored.version),
                None => (BlastRecord::default(), 0),
            };
            if !record.alert_due(now) {
                return Ok(false);
            }
            record.alert_claimed_until = Some(now + BLAST_ALERT_CLAIM);
            let doc = Self::encode(&record)?;
            if self.store.put(&key, &doc, version, None).await?.is_some() {
                return Ok(true);
            }
        }
        Err(LedgerError(format!(
            "tenant {tenant_id} blast record kept changing"
        )))
    }

    /// Reports the claimed blast-radius alert: sent (no other alert this hour) or not (the
    /// claim is released, so the next refusal or the case's retry sends it).
    pub async fn blast_alert_done(
        &self,
        tenant_id: &str,
        sent: bool,
        now: OffsetDateTime,
    ) -> Result<(), LedgerError> {
        let key = format!("tenant#{tenant_id}#blast");
        for _ in 0..MAX_CONFLICTS {
            let Some(stored) = self.store.get(&key).await? else {
                return Ok(());
            };
            let mut record = Self::decode::<BlastRecord>(&stored)?;
            if sent {
                record.alerted_at = Some(now);
            }
            record.alert_claimed_until = None;
            let doc = Self::encode(&record)?;
            if self
                .store
                .put(&key, &doc, stored.version, None)
                .await?
                .is_some()
            {
                return Ok(());
            }
        }
        Err(LedgerError(format!(
            "tenant {tenant_id} blast record kept changing"
        )))
    }
}

/// The behaviour every store adapter must have, run by each adapter's tests (SQLite in unit
/// tests, DynamoDB against moto in `tests/durable_pipeline.rs`).
#[doc(hidden)]
pub mod contract {
    use super::*;

    fn item(key: &str, doc: &str) -> NewItem {
        NewItem {
            key: key.into(),
            doc: doc.into(),
            expires_at: Some(unix(OffsetDateTime::now_utc()) + 3600),
        }
    }

    /// The behaviour every store must have; `prefix` keeps runs apart on a shared table.
    pub async fn run(store: &dyn Store, prefix: &str) {
        let k = |name: &str| format!("{prefix}{name}");
        // create_all creates new keys once and leaves existing ones untouched.
        let created = store
            .create_all(&[item(&k("a"), "{\"n\":1}"), item(&k("b"), "{\"n\":2}")])
            .await
            .unwrap();
        assert_eq!(created, 2);
        let again = store
            .create_all(&[item(&k("a"), "{\"n\":99}"), item(&k("c"), "{\"n\":3}")])
            .await
            .unwrap();
        assert_eq!(again, 1, "only c is new");
        let a = store.get(&k("a")).await.unwrap().unwrap();
        assert_eq!(a.doc, "{\"n\":1}");
        assert_eq!(a.version, 1);
        assert!(store.get(&k("zzz")).await.unwrap().is_none());

        // Optimistic writes: the right version wins, a stale one is refused.
        assert_eq!(
            store.put(&k("a"), "{\"n\":10}", 1, None).await.unwrap(),
            Some(2)
        );
        assert_eq!(
            store.put(&k("a"), "{\"n\":11}", 1, None).await.unwrap(),
            None
        );
        assert_eq!(store.put(&k("new"), "{}", 0, None).await.unwrap(), Some(1));
        assert_eq!(store.put(&k("new"), "{}", 0, None).await.unwrap(), None);

        // Concurrent writers over the same version: exactly one wins.
        let b = k("b");
        let (w1, w2, w3, w4) = tokio::join!(
            store.put(&b, "{\"w\":1}", 1, None),
            store.put(&b, "{\"w\":2}", 1, None),
            store.put(&b, "{\"w\":3}", 1, None),
            store.put(&b, "{\"w\":4}", 1, None),
        );
        let won = [w1, w2, w3, w4]
            .into_iter()
            .filter(|r| r.as_ref().unwrap().is_some())
            .count();
        assert_eq!(won, 1);

        let many = store
            .get_many(&[k("a"), k("b"), k("missing")])
            .await
            .unwrap();
        assert_eq!(many.len(), 2);

        let listed = store.list(prefix, 10).await.unwrap();
        assert_eq!(listed.len(), 4);

        // Deletion is versioned too.
        assert!(!store.delete(&k("c"), 7).await.unwrap());
        assert!(store.delete(&k("c"), 1).await.unwrap());
        assert!(store.get(&k("c")).await.unwrap().is_none());

        // put_all replaces, whatever was there.
        let replaced: Vec<NewItem> = (0..60)
            .map(|i| item(&k(&format!("view-{i}")), &format!("{{\"i\":{i}}}")))
            .collect();
        store.put_all(&replaced).await.unwrap();
        store.put_all(&replaced[..30]).await.unwrap();
        let again = store.get(&k("view-59")).await.unwrap().unwrap();
        assert_eq!(again.doc, "{\"i\":59}");
        assert_eq!(
            store
                .get_many(&(0..60).map(|i| k(&format!("view-{i}"))).collect::<Vec<_>>())
                .await
                .unwrap()
                .len(),
            60
        );

        // A batch larger than one DynamoDB transaction (100) is kept whole.
        let big: Vec<NewItem> = (0..230)
            .map(|i| item(&k(&format!("big-{i}")), "{}"))
            .collect();
        assert_eq!(store.create_all(&big).await.unwrap(), 230);
        assert_eq!(store.create_all(&big).await.unwrap(), 0);
    }
}
