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
use crate::support::clock::ServiceClock;

/// Listings reach this far behind the watermark, so a record updated while a listing ran is
/// not missed (Identity Protection may set `riskLastUpdatedDateTime` slightly in the past).
pub const OVERLAP: time::Duration = time::Duration::minutes(5);
/// How long risk records are kept in the view (refreshed whenever they change).
const ENTRY_RETENTION_SECONDS: i64 = 400 * 24 * 3600;
/// How far back a view lists again when its own times cannot be trusted (written by a host
/// whose clock was ahead): every record it could still hold.
const RECOVERY_LOOKBACK: time::Duration = time::Duration::seconds(ENTRY_RETENTION_SECONDS);

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
    /// A listing stopped at the page limit: the next listing continues it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuation: Option<Continuation>,
}

/// Where a listing cut short at the page limit stopped, so the next one continues from there
/// instead of listing the same window from the same start again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Continuation {
    /// Graph's `@odata.nextLink` for the first page not read.
    pub next_link: String,
    /// Where the listing started (`None`: the full listing of users at risk that seeds the
    /// view).
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub since: Option<OffsetDateTime>,
    /// When its first page was asked for (Graph's clock).
    #[serde(with = "time::serde::rfc3339")]
    pub started: OffsetDateTime,
    /// The newest `riskLastUpdatedDateTime` read so far.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub newest: Option<OffsetDateTime>,
    /// Pages read so far, and records.
    pub pages: usize,
    pub records: usize,
}

impl Continuation {
    /// Whether continuing this listing serves a listing asked for from `since`: a full
    /// listing serves any (it holds every user at risk), a listing of changes one that starts
    /// no earlier.
    fn serves(&self, since: Option<OffsetDateTime>) -> bool {
        match (self.since, since) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(ours), Some(asked)) => ours <= asked,
        }
    }
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
    /// Where the listing started (`None`: a full listing) and when (Graph's clock): a
    /// continued listing started in an earlier run.
    pub since: Option<OffsetDateTime>,
    pub started: OffsetDateTime,
    /// Pages read by this call.
    pub pages: usize,
}

impl ViewState {
    /// Where the next listing of changes must start for the view to stay whole: [`OVERLAP`]
    /// behind the watermark (or, with no record listed yet, behind the last refresh). `None`
    /// while no full listing has seeded the view: only a full listing can make it whole.
    pub fn next_since(&self) -> Option<OffsetDateTime> {
        if !self.complete {
            return None;
        }
        self.watermark.max(self.refreshed_at).map(|w| w - OVERLAP)
    }

    /// Refuses times later than Graph's clock allows (written by a host whose clock was
    /// ahead): logged with how far ahead, and the view lists again every record it could
    /// hold, continuing past page limits, instead of waiting for a future watermark.
    fn refuse_future(&mut self, clock: &ServiceClock, tenant: &str) {
        let times = [
            ("the risk view's watermark", self.watermark),
            ("the risk view's last refresh", self.refreshed_at),
            (
                "the risk view's continued listing",
                self.continuation.as_ref().map(|c| c.started),
            ),
        ];
        for (what, at) in times {
            if let Some(Err(refused)) = at.map(|at| clock.not_future(what, at)) {
                tracing::error!(tenant_id = %tenant, error = %refused, "refused a time in the future: the view lists every record it could hold again");
                let from = clock.now() - RECOVERY_LOOKBACK;
                self.watermark = Some(from + OVERLAP);
                self.refreshed_at = None;
                self.continuation = None;
                return;
            }
        }
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
    /// The view's bookkeeping and its version; a time in it later than Graph's clock allows is
    /// refused ([`ViewState::refuse_future`]).
    pub async fn state(&self, tenant: &str) -> Result<(ViewState, u64), LedgerError> {
        match self.ledger.store().get(&state_key(tenant)).await? {
            Some(stored) => {
                let mut state: ViewState = serde_json::from_str(&stored.doc).unwrap_or_default();
                state.refuse_future(self.graph.clock(), tenant);
                Ok((state, stored.version))
            }
            None => Ok((ViewState::default(), 0)),
        }
    }

    /// Writes the view's bookkeeping over `version`; `false` if another writer changed it.
    async fn save_state(
        &self,
        tenant: &str,
        state: &ViewState,
        version: u64,
    ) -> Result<bool, LedgerError> {
        let doc = serde_json::to_string(state).unwrap_or_default();
        Ok(self
            .ledger
            .store()
            .put(&state_key(tenant), &doc, version, None)
            .await?
            .is_some())
    }

    /// Lists what changed since `since` (when `None`: every user at risk now, which seeds the
    /// view and marks it complete) and writes it into the view. The watermark and
    /// `refreshed_at` move only when the listing covers the view ([`ViewState::covered_by`]).
    /// A listing of changes into a view no full listing has seeded yet writes nothing: the
    /// seed lists only users at risk, so a record it did not list (a user dismissed meanwhile)
    /// would stay in the view at risk, with no later listing reaching back to correct it.
    ///
    /// A listing stopped at the page limit keeps where it stopped
    /// ([`ViewState::continuation`]); the next call whose listing it serves continues it, so
    /// however many records changed, the view moves forward by a page budget a call.
    pub async fn absorb_listing(
        &self,
        tenant: &str,
        since: Option<OffsetDateTime>,
    ) -> Result<Absorbed, ViewError> {
        let started_here = OffsetDateTime::now_utc();
        // Read before listing: a seed that finishes while this listing runs may not have
        // listed a record this listing read earlier and is about to write.
        let (before, _) = self.state(tenant).await?;
        let seeded = before.complete;
        let resumed = before
            .continuation
            .clone()
            .filter(|c| c.serves(since) && self.graph.is_risky_users_link(&c.next_link));
        let (listed, listing) = match &resumed {
            Some(c) => match self.graph.risky_users_from(tenant, &c.next_link).await {
                Ok(read) => read,
                // A link Graph no longer takes: the listing starts again where it started.
                Err(e @ (GraphError::Api { .. } | GraphError::NotFound { .. })) => {
                    tracing::warn!(tenant_id = %tenant, error = %e, "the continued risk listing's next link was refused: listing again from its start");
                    return self.restart(tenant, since).await;
                }
                Err(e) => return Err(e.into()),
            },
            None => {
                let path = GraphClient::risky_users_path(since)?;
                self.graph.risky_users_from(tenant, &path).await?
            }
        };
        // Graph's clock, now that a response told it.
        let started = self.graph.clock().to_service(started_here);
        let (listing_since, listing_started) = match &resumed {
            Some(c) => (c.since, c.started),
            None => (since, started),
        };
        let entries: Vec<ViewEntry> = listed
            .iter()
            .map(|r| ViewEntry {
                user_id: r.id.to_ascii_lowercase(),
                user_principal_name: r.user_principal_name.clone(),
                record: r.record(),
            })
            .collect();
        let writes = seeded || listing_since.is_none();
        let written = if writes {
            self.write_entries(tenant, &entries, started).await?
        } else {
            0
        };
        let newest = entries
            .iter()
            .filter_map(|e| e.record.last_updated)
            .max()
            .max(resumed.as_ref().and_then(|c| c.newest));
        let complete = listing.paging.is_complete();
        let continuation = listing.next_link.clone().map(|next_link| Continuation {
            next_link,
            since: listing_since,
            started: listing_started,
            newest,
            pages: resumed.as_ref().map_or(0, |c| c.pages) + listing.pages,
            records: resumed.as_ref().map_or(0, |c| c.records) + entries.len(),
        });
        let mut advanced = false;
        if writes {
            for _ in 0..16 {
                let (mut state, version) = self.state(tenant).await?;
                // Another run moved the listing on (or finished it) meanwhile: its state stands.
                let ours = state.continuation == before.continuation
                    || (resumed.is_none() && state.continuation.is_none());
                match &continuation {
                    Some(next) if ours => state.continuation = Some(next.clone()),
                    Some(_) => {}
                    None => {
                        if ours && resumed.is_some() {
                            state.continuation = None;
                        }
                        if !state.covered_by(listing_since) {
                            break;
                        }
                        state.watermark = state.watermark.max(newest.map(|n| n.min(started)));
                        state.refreshed_at = state.refreshed_at.max(Some(listing_started));
                        state.complete |= listing_since.is_none();
                        advanced = true;
                    }
                }
                if self.save_state(tenant, &state, version).await? {
                    break;
                }
                advanced = false;
            }
        }
        if let Some(next) = &continuation {
            tracing::warn!(tenant_id = %tenant, listed = entries.len(), written, full = listing_since.is_none(),
                pages = next.pages, records = next.records,
                "risk listing stopped at the page limit: what was read is in the view, and the next listing continues where it stopped");
        } else if advanced {
            tracing::info!(tenant_id = %tenant, listed = entries.len(), written, full = listing_since.is_none(), "risk view refreshed");
        } else {
            tracing::info!(tenant_id = %tenant, listed = entries.len(), written, since = ?listing_since, seeded,
                "risk listing did not reach back to the view's watermark: records added, the view's watermark and freshness not moved");
        }
        Ok(Absorbed {
            entries,
            complete,
            advanced,
            since: listing_since,
            started: listing_started,
            pages: listing.pages,
        })
    }

    /// Drops a continuation Graph refused and lists from `since` afresh.
    async fn restart(
        &self,
        tenant: &str,
        since: Option<OffsetDateTime>,
    ) -> Result<Absorbed, ViewError> {
        for _ in 0..16 {
            let (mut state, version) = self.state(tenant).await?;
            if state.continuation.take().is_none() {
                break;
            }
            if self.save_state(tenant, &state, version).await? {
                break;
            }
        }
        Box::pin(self.absorb_listing(tenant, since)).await
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
