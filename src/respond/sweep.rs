//! The sweep: the administrator's own procedure, automated. On a schedule (and from the CLI),
//! for each tenant: list the risky users whose risk changed since the tenant's watermark, and
//! the sign-ins that failed with AADSTS53011 since then; every user found becomes a signal,
//! kept through the same intake (ledger, then queue) as webhook signals, so the product works
//! with no webhook at all and catches what a lost delivery missed. Watermarks move only after
//! the signals are kept, only as far as was read (a truncated risk listing moves nothing; a
//! truncated sign-in listing, newest first, moves its watermark and keeps the unread window as
//! the tenant's [`SignInGap`], read by later runs), and every listing reaches back ([`OVERLAP`]
//! for risk records, [`SIGN_IN_OVERLAP`] for sign-ins, which reach the log late) so nothing
//! falls between two runs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::intake::Intake;
use super::view::{OVERLAP, RiskView, ViewError};
use crate::event::{
    EventSource, Origin, OriginKind, RiskEvent, RiskLevel, Subject, derive_event_id,
};
use crate::graph::{GraphClient, GraphError};
use crate::ledger::{Ledger, LedgerError};
use crate::queue::WorkItem;
use crate::support::clock::ServiceClock;

/// A tenant's sweep watermarks (`tenant#{tenant}#sweep`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SweepState {
    /// Identity Protection records changed up to here were turned into signals.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub risk_watermark: Option<OffsetDateTime>,
    /// 53011 sign-ins up to here were turned into signals.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub sign_in_watermark: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub last_run: Option<OffsetDateTime>,
    /// 53011 sign-ins left unread behind the sign-in watermark: a listing stopped at the page
    /// limit (newest first, so it read the newest and left the oldest). Later runs read it
    /// with the pages their own listing leaves over, oldest part last.
    #[serde(default)]
    pub sign_in_gap: Option<SignInGap>,
}

impl SweepState {
    /// Refuses times later than Graph's clock allows (written by a host whose clock was
    /// ahead): each is logged with how far ahead it is and dropped, so the sweep lists from its
    /// first look-back again instead of from a watermark in the future.
    fn refuse_future(&mut self, clock: &ServiceClock, tenant: &str) {
        let refuse = |what: &str, at: &mut Option<OffsetDateTime>| {
            if let Some(Err(refused)) = at.map(|t| clock.not_future(what, t)) {
                tracing::error!(tenant_id = %tenant, error = %refused, "refused a time in the future: the sweep lists from its look-back");
                *at = None;
            }
        };
        refuse("the sweep's risk watermark", &mut self.risk_watermark);
        refuse("the sweep's sign-in watermark", &mut self.sign_in_watermark);
        refuse("the sweep's last run", &mut self.last_run);
        // A gap reaching into the future is read up to now (reading more is harmless).
        if let Some(gap) = self.sign_in_gap.as_mut()
            && let Err(refused) = clock.not_future("the end of the sweep's sign-in gap", gap.until)
        {
            tracing::error!(tenant_id = %tenant, error = %refused, "refused a time in the future: the gap is read up to now");
            gap.until = clock.now();
            gap.since = gap.since.min(gap.until);
        }
    }
}

/// A window of the sign-in log not read yet: `since` to `until`, both included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignInGap {
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
}

impl SignInGap {
    /// One window holding both (what lies between is read again: never a hole).
    fn union(self, other: Option<SignInGap>) -> SignInGap {
        match other {
            None => self,
            Some(o) => SignInGap {
                since: self.since.min(o.since),
                until: self.until.max(o.until),
            },
        }
    }

    /// The gap to store after a run that started with `started_with`, found `stored` now and
    /// leaves `ours`: ours, unless another run changed the gap meanwhile; then both (never a
    /// hole; at worst a window is read twice).
    fn after_run(
        started_with: Option<SignInGap>,
        stored: Option<SignInGap>,
        ours: Option<SignInGap>,
    ) -> Option<SignInGap> {
        match stored {
            theirs if theirs == started_with => ours,
            Some(theirs) => Some(theirs.union(ours)),
            None => ours,
        }
    }
}

/// What one tenant's sweep found.
#[derive(Debug, Clone, Serialize)]
pub struct SweepReport {
    pub tenant_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub risk_since: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub sign_ins_since: OffsetDateTime,
    /// Identity Protection records listed (any state).
    pub records_listed: usize,
    /// Users at risk among them.
    pub users_at_risk: usize,
    /// Sign-ins that failed with 53011.
    pub blocked_sign_ins: usize,
    /// Users those sign-ins belong to.
    pub users_blocked: usize,
    /// The signals kept (ledger and queue).
    pub signals: Vec<RiskEvent>,
    /// Sign-ins still unread after this run (a listing stopped at the page limit): later runs
    /// read them.
    pub sign_in_gap: Option<SignInGap>,
}

/// How far back each sign-in listing reaches behind the sign-in watermark. Entries reach the
/// sign-in log minutes after the sign-in (Microsoft's latency table gave 2 minutes at the
/// 95th percentile and 5 at the 99th; the current page names no bound and says many factors
/// add delay): 30 minutes covers that several times over. Re-listed sign-ins cost nothing: a
/// user's signal is named after its newest sign-in id and kept once.
pub const SIGN_IN_OVERLAP: time::Duration = time::Duration::minutes(30);

/// Why a sweep stopped. Graph, ledger and intake failures keep nothing and move no
/// watermark; a truncated listing keeps what it read and moves only the complete one's.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("signals could not be kept: {0}")]
    Intake(String),
    #[error(
        "the {listing} listing stopped at the page limit: {kept} signal(s) from what was read were kept, its watermark did not move, and the next run continues the listing where it stopped"
    )]
    Truncated { listing: &'static str, kept: usize },
    /// More 53011 sign-ins than one run reads: the newest were read and kept, the rest is the
    /// tenant's gap, read by the next runs. An error so that the alarm tells a person.
    #[error(
        "more 53011 sign-ins than {pages} pages: {kept} signal(s) from the newest were kept and the watermark moved; {since} to {until} is left for the next runs"
    )]
    SignInsLeft {
        kept: usize,
        since: OffsetDateTime,
        until: OffsetDateTime,
        pages: usize,
    },
}

impl From<ViewError> for SweepError {
    fn from(e: ViewError) -> Self {
        match e {
            ViewError::Graph(g) => SweepError::Graph(g),
            ViewError::Ledger(l) => SweepError::Ledger(l),
        }
    }
}

/// Tenants swept at once by [`Sweeper::run_all`]. Each tenant's requests wait on its own
/// budgets (up to [`crate::graph::limiter::MAX_WAIT`] a request), so one after another a slow
/// tenant would use up the sweep's time (the Lambda allows 120 s) before later tenants start;
/// four at once keep a tenant that waits from holding back the others.
pub const TENANTS_AT_ONCE: usize = 4;

/// Runs sweeps.
pub struct Sweeper<'a> {
    pub graph: &'a GraphClient,
    pub ledger: &'a Ledger,
    pub intake: &'a Intake,
    /// How far back the first sweep of a tenant looks (the policy's look-back).
    pub first_lookback: time::Duration,
}

fn key(tenant: &str) -> String {
    format!("tenant#{tenant}#sweep")
}

struct Blocked {
    count: usize,
    newest_id: String,
    newest_at: String,
    upn: Option<String>,
}

/// The 53011 sign-ins read by one run, per user.
#[derive(Default)]
struct BlockedTally {
    users: BTreeMap<String, Blocked>,
    sign_ins: usize,
    seen: std::collections::HashSet<String>,
    /// The oldest sign-in time of the current listing (where a truncated one stopped).
    oldest: Option<OffsetDateTime>,
}

impl BlockedTally {
    fn add(&mut self, sign_in: &serde_json::Value) {
        let at = sign_in["createdDateTime"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if let Ok(t) = OffsetDateTime::parse(&at, &time::format_description::well_known::Rfc3339) {
            self.oldest = Some(self.oldest.map_or(t, |o| o.min(t)));
        }
        let Some(user) = sign_in["userId"].as_str().map(str::to_ascii_lowercase) else {
            return;
        };
        let id = sign_in["id"].as_str().unwrap_or_default().to_owned();
        // A sign-in listed twice (pages shifting under new entries, or two windows) counts once.
        if !id.is_empty() && !self.seen.insert(id.clone()) {
            return;
        }
        self.sign_ins += 1;
        let upn = sign_in["userPrincipalName"].as_str().map(str::to_owned);
        let entry = self.users.entry(user).or_insert_with(|| Blocked {
            count: 0,
            newest_id: id.clone(),
            newest_at: at.clone(),
            upn,
        });
        entry.count += 1;
        if at > entry.newest_at {
            entry.newest_at = at;
            entry.newest_id = id;
        }
    }
}

impl Sweeper<'_> {
    /// The tenant's watermarks and their version; a time in them later than Graph's clock
    /// allows is refused ([`SweepState::refuse_future`]).
    pub async fn state(&self, tenant: &str) -> Result<(SweepState, u64), LedgerError> {
        match self.ledger.store().get(&key(tenant)).await? {
            Some(stored) => {
                let mut state: SweepState = serde_json::from_str(&stored.doc).unwrap_or_default();
                state.refuse_future(self.graph.clock(), tenant);
                Ok((state, stored.version))
            }
            None => Ok((SweepState::default(), 0)),
        }
    }

    /// Sweeps every tenant of `tenants` ([`TENANTS_AT_ONCE`] at a time) as [`Sweeper::run`]
    /// does; one outcome per tenant, in the order given. A tenant that fails stops none of the
    /// others.
    pub async fn run_all(
        &self,
        tenants: &[String],
        since: Option<OffsetDateTime>,
    ) -> Vec<(String, Result<SweepReport, SweepError>)> {
        use futures_util::stream::{self, StreamExt};
        let mut outcomes: Vec<(usize, String, Result<SweepReport, SweepError>)> =
            stream::iter(tenants.iter().enumerate())
                .map(
                    |(i, tenant)| async move { (i, tenant.clone(), self.run(tenant, since).await) },
                )
                .buffer_unordered(TENANTS_AT_ONCE)
                .collect()
                .await;
        outcomes.sort_by_key(|(i, _, _)| *i);
        outcomes
            .into_iter()
            .map(|(_, tenant, outcome)| (tenant, outcome))
            .collect()
    }

    /// Sweeps `tenant` from its watermarks (or from `since`, when given). A `since` later than
    /// where the watermarks would start skipped time: such a run moves no watermark, the
    /// view's included (an earlier one, a backfill, moves them as a normal run does).
    pub async fn run(
        &self,
        tenant: &str,
        since: Option<OffsetDateTime>,
    ) -> Result<SweepReport, SweepError> {
        // Graph's clock: the host's, corrected by what earlier responses told (and again below,
        // once this run's own responses did).
        let started_here = OffsetDateTime::now_utc();
        let started = self.graph.clock().to_service(started_here);
        let (state, _) = self.state(tenant).await?;
        let first = started - self.first_lookback;
        let usual_risk_since = state.risk_watermark.map_or(first, |w| w - OVERLAP);
        let usual_sign_ins_since = state
            .sign_in_watermark
            .map_or(first, |w| w - SIGN_IN_OVERLAP);
        let risk_since = since.unwrap_or(usual_risk_since);
        let sign_ins_since = since.unwrap_or(usual_sign_ins_since);
        let may_advance_risk = since.is_none_or(|s| s <= usual_risk_since);
        let may_advance_sign_ins = since.is_none_or(|s| s <= usual_sign_ins_since);

        // Identity Protection: the records changed since the watermark. They also refresh the
        // tenant's view, so workers answer from it: a scheduled run's listing reaches back to
        // where the view's next listing would start when that is earlier (in a quiet tenant
        // the view's watermark, the newest record, lags the sweep's), so the view may count it
        // as covering. Only records inside the sweep's own window become signals. A `--since`
        // run lists exactly from `since`; if that leaves a gap the view takes the records but
        // does not move.
        let view = RiskView {
            graph: self.graph,
            ledger: self.ledger,
        };
        let listing_since = match (since, view.state(tenant).await?.0.next_since()) {
            (None, Some(view_since)) => risk_since.min(view_since),
            _ => risk_since,
        };
        let absorbed = view.absorb_listing(tenant, Some(listing_since)).await?;
        let entries: Vec<_> = absorbed
            .entries
            .into_iter()
            .filter(|e| e.record.last_updated.is_none_or(|t| t >= risk_since))
            .collect();
        // The sign-in log, filtered as an administrator filters it: error 53011, a date window,
        // newest first. A listing that stops at the page limit read the newest sign-ins and
        // left the oldest: the watermark still moves (what is new was read), and the unread
        // window is kept as the tenant's gap, which runs read with the pages they have left,
        // so a flood of sign-ins never stalls the sweep and nothing unread is forgotten.
        let mut tally = BlockedTally::default();
        let budget = self.graph.max_pages();
        let (paging, pages) = self
            .graph
            .blocked_sign_ins_within(tenant, sign_ins_since, None, budget, |sign_in| {
                tally.add(&sign_in);
                Ok(())
            })
            .await?;
        let mut gap = state.sign_in_gap;
        let mut listing_truncated = None;
        if !paging.is_complete() {
            let left = SignInGap {
                since: sign_ins_since,
                until: tally.oldest.unwrap_or(started),
            };
            listing_truncated = Some(left);
            if may_advance_sign_ins {
                gap = Some(left.union(gap));
            }
        } else if let Some(window) = gap.filter(|_| since.is_none() && pages < budget) {
            tally.oldest = None;
            let (paging, _) = self
                .graph
                .blocked_sign_ins_within(
                    tenant,
                    window.since,
                    Some(window.until),
                    budget - pages,
                    |sign_in| {
                        tally.add(&sign_in);
                        Ok(())
                    },
                )
                .await?;
            gap = if paging.is_complete() {
                None
            } else {
                // Read from `until` back to here: what is left is older.
                Some(SignInGap {
                    since: window.since,
                    until: tally.oldest.unwrap_or(window.until).min(window.until),
                })
            };
        }
        // No look-back reaches what is older than the first sweep's: that part of a gap goes.
        let horizon = started - self.first_lookback;
        gap = gap.filter(|g| g.until >= horizon).map(|g| SignInGap {
            since: g.since.max(horizon),
            until: g.until,
        });
        let blocked = tally.users;
        let blocked_sign_ins = tally.sign_ins;
        let started = self.graph.clock().to_service(started_here);

        let mut signals = Vec::new();
        let mut newest_risk = None;
        for entry in &entries {
            newest_risk = newest_risk.max(entry.record.last_updated);
            if !entry.record.at_risk() {
                continue;
            }
            let updated = entry.record.last_updated.unwrap_or(started);
            let stamp = updated.unix_timestamp_nanos().to_string();
            signals.push(RiskEvent {
                event_id: derive_event_id(&["sweep", "risk", tenant, &entry.user_id, &stamp]),
                tenant_id: tenant.to_owned(),
                source: EventSource::Sweep,
                subject: Subject::User {
                    id: Some(entry.user_id.clone()),
                    upn: entry.user_principal_name.clone(),
                },
                risk_level: entry.record.level(),
                detected_at: updated,
                source_id: format!("riskyUser {} {}", entry.record.risk_state, updated),
                resource_data: None,
                origin: Some(sweep_origin(tenant)),
            });
        }
        let users_at_risk = signals.len();
        for (user, seen) in &blocked {
            let detected = OffsetDateTime::parse(
                &seen.newest_at,
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap_or(started);
            signals.push(RiskEvent {
                event_id: derive_event_id(&["sweep", "signin", tenant, user, &seen.newest_id]),
                tenant_id: tenant.to_owned(),
                source: EventSource::Sweep,
                subject: Subject::User {
                    id: Some(user.clone()),
                    upn: seen.upn.clone(),
                },
                risk_level: RiskLevel::Unknown,
                detected_at: detected,
                source_id: format!(
                    "{} sign-in(s) failed with 53011, newest {}",
                    seen.count, seen.newest_id
                ),
                resource_data: None,
                origin: Some(sweep_origin(tenant)),
            });
        }

        // Keep the signals, then move the watermarks: only over what was read completely, and
        // not at all when `--since` skipped time.
        let items: Vec<WorkItem> = signals.iter().cloned().map(WorkItem::Risk).collect();
        if !items.is_empty() {
            self.intake
                .keep(&items)
                .await
                .map_err(|e| SweepError::Intake(e.to_string()))?;
        }
        // A listing continued from an earlier run covers only what had changed when it started.
        let advance_risk = may_advance_risk
            && absorbed.complete
            && absorbed.since.is_none_or(|s| s <= usual_risk_since);
        let risk_listed_at = absorbed.started.min(started);
        // Newest first: even a truncated listing read everything new (its gap is kept).
        let advance_sign_ins = may_advance_sign_ins;
        for _ in 0..16 {
            let (mut current, version) = self.state(tenant).await?;
            if advance_risk {
                // Every record changed before the listing started was listed (the next
                // listing reaches back OVERLAP for records stamped late).
                current.risk_watermark = current
                    .risk_watermark
                    .max(newest_risk.map(|n| n.min(risk_listed_at)))
                    .max(Some(risk_listed_at));
            }
            if advance_sign_ins {
                current.sign_in_watermark = current.sign_in_watermark.max(Some(started));
                current.sign_in_gap =
                    SignInGap::after_run(state.sign_in_gap, current.sign_in_gap, gap);
            }
            current.last_run = Some(started);
            let doc = serde_json::to_string(&current).unwrap_or_default();
            if self
                .ledger
                .store()
                .put(&key(tenant), &doc, version, None)
                .await?
                .is_some()
            {
                break;
            }
        }
        tracing::info!(
            tenant_id = %tenant,
            records = entries.len(),
            users_at_risk,
            blocked_sign_ins,
            signals = signals.len(),
            advance_risk,
            advance_sign_ins,
            sign_in_gap = ?gap,
            "sweep kept its signals"
        );
        if !absorbed.complete {
            return Err(SweepError::Truncated {
                listing: "risky user",
                kept: signals.len(),
            });
        }
        if let Some(left) = listing_truncated {
            return Err(SweepError::SignInsLeft {
                kept: signals.len(),
                since: left.since,
                until: left.until,
                pages,
            });
        }
        Ok(SweepReport {
            tenant_id: tenant.to_owned(),
            risk_since,
            sign_ins_since,
            records_listed: entries.len(),
            users_at_risk,
            blocked_sign_ins,
            users_blocked: blocked.len(),
            signals,
            sign_in_gap: gap,
        })
    }
}

/// What vouches for a sweep's signals: our own credential, reading the tenant itself.
fn sweep_origin(tenant: &str) -> Origin {
    Origin {
        via: OriginKind::Sweep,
        by: "scheduled sweep".into(),
        tenants: vec![tenant.to_owned()],
    }
}

#[cfg(test)]
mod tests {
    use super::SignInGap;
    use time::macros::datetime;

    fn gap(since_hour: u8, until_hour: u8) -> Option<SignInGap> {
        Some(SignInGap {
            since: datetime!(2026-12-01 00:00 UTC)
                .replace_hour(since_hour)
                .unwrap(),
            until: datetime!(2026-12-01 00:00 UTC)
                .replace_hour(until_hour)
                .unwrap(),
        })
    }

    #[test]
    fn a_gap_another_run_changed_meanwhile_is_kept_beside_ours() {
        // Nobody else touched it: ours, whether it shrank, grew or was read.
        assert_eq!(
            SignInGap::after_run(gap(1, 5), gap(1, 5), gap(1, 3)),
            gap(1, 3)
        );
        assert_eq!(SignInGap::after_run(gap(1, 5), gap(1, 5), None), None);
        // Another run read the gap we started with, while ours found a new one: ours stays.
        assert_eq!(SignInGap::after_run(gap(1, 5), None, gap(6, 7)), gap(6, 7));
        // Another run found a new one while we read ours: theirs stays.
        assert_eq!(SignInGap::after_run(None, gap(6, 7), None), gap(6, 7));
        // Both changed it: one window over both.
        assert_eq!(
            SignInGap::after_run(gap(1, 5), gap(1, 2), gap(6, 7)),
            gap(1, 7)
        );
    }
}
