//! The tenant's view of Identity Protection: every user's latest risk record, kept in the
//! ledger and brought up to date by listing the records that changed since the view's
//! watermark (one request per 500 changed users). Workers answer their signals from it instead
//! of reading each user's record: a `users` notification costs no Identity Protection request
//! while the view is fresh, and a burst of signals shares one listing.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::cases::findings::RiskRecord;
use crate::graph::{GraphClient, GraphError};
use crate::ledger::{Ledger, LedgerError};

/// Listings reach this far behind the watermark, so a record updated while a listing ran is
/// not missed (Identity Protection may set `riskLastUpdatedDateTime` slightly in the past).
pub const OVERLAP: time::Duration = time::Duration::minutes(5);
/// How long risk records are kept in the view (refreshed whenever they change).
const ENTRY_RETENTION_SECONDS: i64 = 400 * 24 * 3600;

/// The view's bookkeeping (`tenant#{tenant}#view`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ViewState {
    /// The newest `riskLastUpdatedDateTime` listed so far.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub watermark: Option<OffsetDateTime>,
    /// When the last listing started (our clock): the view is current as of then.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub refreshed_at: Option<OffsetDateTime>,
    /// Whether a complete listing of every user at risk seeded the view (before it, absence
    /// proves nothing; after it, a user the view does not hold is not at risk).
    #[serde(default)]
    pub complete: bool,
}

/// One user's record in the view (`tenant#{tenant}#risk#{user}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewEntry {
    pub user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_principal_name: Option<String>,
    pub record: RiskRecord,
}

/// Why the view could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ViewError {
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// What one listing brought into the view.
#[derive(Debug, Clone)]
pub struct Absorbed {
    /// The records listed (also those the view already had newer).
    pub entries: Vec<ViewEntry>,
    /// Whether every page was read. Only a complete listing moves the view's watermark, marks
    /// it current or (the first time) complete; a truncated one only adds what it read.
    pub complete: bool,
    /// Whether the listing moved the view's watermark and freshness: a complete full listing,
    /// or a complete listing of changes that reached back to [`ViewState::next_since`].
    pub advanced: bool,
}

impl ViewState {
    /// Where the next listing of changes must start for the view to stay whole: [`OVERLAP`]
    /// behind the watermark (or, with no record listed yet, behind the last refresh). `None`
    /// while no full listing has seeded the view: only a full listing can make it whole.
    pub fn next_since(&self) -> Option<OffsetDateTime> {
        if !self.complete {
            return None;
        }
        self.watermark.or(self.refreshed_at).map(|w| w - OVERLAP)
    }

    /// Whether a complete listing from `since` (`None`: a full listing) leaves no gap between
    /// what the view holds and now, so it may move the watermark and `refreshed_at`. A listing
    /// that starts later than [`ViewState::next_since`] skipped the changes in between: it
    /// adds its records but moves nothing, or the view would claim to be current while
    /// missing them.
    fn covered_by(&self, since: Option<OffsetDateTime>) -> bool {
        match since {
            None => true,
            Some(since) => self.next_since().is_some_and(|from| since <= from),
        }
    }
}

/// Entries written at once (each a conditional write of its own).
const WRITES_AT_ONCE: usize = 16;

/// The view over a tenant, through Graph and the ledger.
pub struct RiskView<'a> {
    pub graph: &'a GraphClient,
    pub ledger: &'a Ledger,
}

fn state_key(tenant: &str) -> String {
    format!("tenant#{tenant}#view")
}

fn entry_key(tenant: &str, user: &str) -> String {
    format!("tenant#{tenant}#risk#{user}")
}

impl RiskView<'_> {
    /// The view's bookkeeping and its version.
    pub async fn state(&self, tenant: &str) -> Result<(ViewState, u64), LedgerError> {
        match self.ledger.store().get(&state_key(tenant)).await? {
            Some(stored) => Ok((
                serde_json::from_str(&stored.doc).unwrap_or_default(),
                stored.version,
            )),
            None => Ok((ViewState::default(), 0)),
        }
    }

    /// Lists what changed since `since` (when `None`: every user at risk now, which seeds the
    /// view and marks it complete) and writes it into the view. The watermark and
    /// `refreshed_at` move only when the listing covers the view ([`ViewState::covered_by`]).
    /// A listing of changes into a view no full listing has seeded yet writes nothing: the
    /// seed lists only users at risk, so a record it did not list (a user dismissed meanwhile)
    /// would stay in the view at risk, with no later listing reaching back to correct it.
    pub async fn absorb_listing(
        &self,
        tenant: &str,
        since: Option<OffsetDateTime>,
    ) -> Result<Absorbed, ViewError> {
        let started = OffsetDateTime::now_utc();
        // Read before listing: a seed that finishes while this listing runs may not have
        // listed a record this listing read earlier and is about to write.
        let seeded = self.state(tenant).await?.0.complete;
        let (listed, paging) = self.graph.risky_users_since(tenant, since).await?;
        let entries: Vec<ViewEntry> = listed
            .iter()
            .map(|r| ViewEntry {
                user_id: r.id.to_ascii_lowercase(),
                user_principal_name: r.user_principal_name.clone(),
                record: r.record(),
            })
            .collect();
        let writes = seeded || since.is_none();
        let written = if writes {
            self.write_entries(tenant, &entries, started).await?
        } else {
            0
        };
        let complete = paging.is_complete();
        if !complete {
            tracing::error!(tenant_id = %tenant, listed = entries.len(), full = since.is_none(), ?paging,
                "risk listing truncated: the view keeps what was read, but neither its watermark nor its freshness moves");
            return Ok(Absorbed {
                entries,
                complete,
                advanced: false,
            });
        }
        let newest = entries.iter().filter_map(|e| e.record.last_updated).max();
        let mut advanced = false;
        if writes {
            for _ in 0..16 {
                let (mut state, version) = self.state(tenant).await?;
                if !state.covered_by(since) {
                    break;
                }
                state.watermark = state.watermark.max(newest);
                state.refreshed_at = state.refreshed_at.max(Some(started));
                state.complete |= since.is_none();
                let doc = serde_json::to_string(&state).unwrap_or_default();
                if self
                    .ledger
                    .store()
                    .put(&state_key(tenant), &doc, version, None)
                    .await?
                    .is_some()
                {
                    advanced = true;
                    break;
                }
            }
        }
        if advanced {
            tracing::info!(tenant_id = %tenant, listed = entries.len(), written, full = since.is_none(), "risk view refreshed");
        } else {
            tracing::info!(tenant_id = %tenant, listed = entries.len(), written, since = ?since, seeded,
                "risk listing did not reach back to the view's watermark: records added, the view's watermark and freshness not moved");
        }
        Ok(Absorbed {
            entries,
            complete,
            advanced,
        })
    }

    /// Writes each entry unless the view holds a newer record of the user
    /// (`riskLastUpdatedDateTime`): an older listing finishing late never overwrites a newer
    /// one. Each write is conditional on the version read. Returns how many were written.
    async fn write_entries(
        &self,
        tenant: &str,
        entries: &[ViewEntry],
        listed_at: OffsetDateTime,
    ) -> Result<usize, LedgerError> {
        let expires = Some(listed_at.unix_timestamp() + ENTRY_RETENTION_SECONDS);
        let mut written = 0;
        for wave in entries.chunks(WRITES_AT_ONCE) {
            let writes = wave
                .iter()
                .map(|entry| self.write_entry(tenant, entry, expires));
            for result in futures_util::future::join_all(writes).await {
                written += usize::from(result?);
            }
        }
        Ok(written)
    }

    /// Writes one entry unless the view holds a newer (or the same) record of the user;
    /// conditional on the version read, read again after a conflict.
    async fn write_entry(
        &self,
        tenant: &str,
        entry: &ViewEntry,
        expires: Option<i64>,
    ) -> Result<bool, LedgerError> {
        let key = entry_key(tenant, &entry.user_id);
        let doc = serde_json::to_string(entry).unwrap_or_default();
        for _ in 0..16 {
            let stored = self.ledger.store().get(&key).await?;
            let version = match &stored {
                Some(stored) => {
                    let held = serde_json::from_str::<ViewEntry>(&stored.doc).ok();
                    let newer_held = held.as_ref().is_some_and(|held| {
                        held.record.last_updated > entry.record.last_updated || held == entry
                    });
                    if newer_held {
                        return Ok(false);
                    }
                    stored.version
                }
                None => 0,
            };
            if self
                .ledger
                .store()
                .put(&key, &doc, version, expires)
                .await?
                .is_some()
            {
                return Ok(true);
            }
        }
        Err(LedgerError(format!("view entry {key} kept changing")))
    }

    /// Brings the view up to date: the records changed since its watermark (every user at
    /// risk the first time). A truncated listing is an error: the view is not current.
    pub async fn refresh(&self, tenant: &str) -> Result<Vec<ViewEntry>, ViewError> {
        let (state, _) = self.state(tenant).await?;
        let absorbed = self.absorb_listing(tenant, state.next_since()).await?;
        if !absorbed.complete {
            return Err(ViewError::Graph(GraphError::Truncated {
                pages: self.graph.max_pages(),
            }));
        }
        Ok(absorbed.entries)
    }

    /// Each user's record, from a view current as of `fresh_after` at least (refreshing it once
    /// if it is older). `None` for a user Identity Protection has no record of.
    pub async fn risks(
        &self,
        tenant: &str,
        users: &[String],
        fresh_after: OffsetDateTime,
    ) -> Result<HashMap<String, Option<RiskRecord>>, ViewError> {
        let current = |state: &ViewState| {
            state.complete && state.refreshed_at.is_some_and(|t| t >= fresh_after)
        };
        if !current(&self.state(tenant).await?.0) {
            // Wait for our turn on the tenant's Identity Protection budget, then look again:
            // another worker may have listed meanwhile (the slot then serves a later request).
            self.graph
                .reserve(tenant, crate::graph::limiter::Budget::IdentityProtection)
                .await?;
            if !current(&self.state(tenant).await?.0) {
                self.refresh(tenant).await?;
            }
        }
        let keys: Vec<String> = users.iter().map(|u| entry_key(tenant, u)).collect();
        let found = self.ledger.store().get_many(&keys).await?;
        let mut out: HashMap<String, Option<RiskRecord>> =
            users.iter().map(|u| (u.clone(), None)).collect();
        for stored in found {
            if let Ok(entry) = serde_json::from_str::<ViewEntry>(&stored.doc) {
                out.insert(entry.user_id.clone(), Some(entry.record));
            }
        }
        Ok(out)
    }
}
