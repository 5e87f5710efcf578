//! The case: one risk episode of one user, the signals merged into it, its plan (computed once,
//! then only escalated), the state of every action, the rails that held it, the decisions
//! people made, and a bounded history. This is the idempotency key of remediation.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::findings::Findings;
pub use super::lease::Lease;
use super::policy::{Action, Mode, Rule};
use crate::event::{EventSource, RiskLevel, derive_event_id};

/// Signals kept in detail per case (the count covers all).
pub const SIGNALS_KEPT: usize = 25;
/// History entries kept per case (the count of older ones is kept).
pub const HISTORY_KEPT: usize = 100;
/// Decisions kept per case.
pub const DECISIONS_KEPT: usize = 20;

/// What tells one risk episode of a user from the next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Episode {
    /// Identity Protection's risk record as it was when the case opened.
    IdentityProtection {
        #[serde(with = "time::serde::rfc3339::option", default)]
        risk_last_updated: Option<OffsetDateTime>,
        risk_state: String,
    },
    /// A detection of the source's own (no Identity Protection record): the alert or
    /// incident, plus the policy's `source_episode_hours` after the case opened.
    Source {
        source: EventSource,
        source_id: String,
    },
}

impl Episode {
    /// The stable text the case id is derived from.
    pub fn key(&self) -> String {
        match self {
            Episode::IdentityProtection {
                risk_last_updated, ..
            } => format!(
                "ip:{}",
                risk_last_updated.map_or(0, |t| t.unix_timestamp_nanos() / 1_000_000)
            ),
            Episode::Source { source, source_id } => {
                format!("source:{}:{source_id}", source.as_str())
            }
        }
    }
}

/// The case id for a user's episode: the same inputs always give the same id, so concurrent
/// workers opening the same episode converge on one case.
pub fn case_id(tenant_id: &str, user_id: &str, episode: &Episode) -> String {
    format!(
        "c-{}",
        &derive_event_id(&["case", tenant_id, user_id, &episode.key()])[..24]
    )
}

/// Where a case stands and who must act next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseStatus {
    /// Opened; the worker investigates and plans it.
    New,
    /// Planned; the worker carries out its pending actions.
    Open,
    /// A transient failure (throttling, outage): the worker retries it.
    Retry,
    /// A failure an operator must fix (permission, credential, an unexpected refusal); the
    /// worker keeps retrying it (then the alarmed DLQ), and `cases retry` resumes it.
    NeedsOperator,
    /// A safety rail held actions: a person approves or skips them.
    AwaitingApproval,
    /// Every action was done, skipped, or (report-only) planned.
    Completed,
    /// A person decided that nothing more is done.
    Skipped,
}

impl CaseStatus {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CaseStatus::New => "new",
            CaseStatus::Open => "open",
            CaseStatus::Retry => "retry",
            CaseStatus::NeedsOperator => "needs_operator",
            CaseStatus::AwaitingApproval => "awaiting_approval",
            CaseStatus::Completed => "completed",
            CaseStatus::Skipped => "skipped",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "new" => CaseStatus::New,
            "open" => CaseStatus::Open,
            "retry" => CaseStatus::Retry,
            "needs_operator" => CaseStatus::NeedsOperator,
            "awaiting_approval" => CaseStatus::AwaitingApproval,
            "completed" => CaseStatus::Completed,
            "skipped" => CaseStatus::Skipped,
            _ => return None,
        })
    }
}

/// What became of one planned action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ActionState {
    /// To be carried out by the worker.
    Pending,
    /// Report-only: recorded, not carried out.
    Planned,
    /// Held by a safety rail until a person approves.
    Held { rail: String },
    Done {
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// Not carried out, and why (its precondition did not hold, a rail, or a person).
    Skipped {
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
        reason: String,
    },
    /// The last attempt failed; the action is attempted again on retry.
    Failed {
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
        error: String,
        transient: bool,
        needs_operator: bool,
    },
}

impl ActionState {
    /// A short word for listings.
    pub fn word(&self) -> &'static str {
        match self {
            ActionState::Pending => "pending",
            ActionState::Planned => "planned",
            ActionState::Held { .. } => "held",
            ActionState::Done { .. } => "done",
            ActionState::Skipped { .. } => "skipped",
            ActionState::Failed { .. } => "failed",
        }
    }

    /// Whether the worker may carry it out now.
    pub fn runnable(&self) -> bool {
        matches!(self, ActionState::Pending | ActionState::Failed { .. })
    }
}

/// One action of a case's plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseAction {
    pub action: Action,
    /// The rule that called for it (or the person who approved it).
    pub rule: String,
    #[serde(flatten)]
    pub state: ActionState,
    #[serde(default)]
    pub attempts: u32,
    /// The person whose approval released the action past a rail (their decision overrides
    /// the run-time guards of that rail: the reset cooldown, a dismiss without a reset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// The SOC mail (one case's, or a digest of several) this `notify` went out in, recorded
    /// before it is sent: a worker that resumes the case after another stopped asks the
    /// ledger whether that mail was sent before it sends one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail_id: Option<String>,
    /// What a worker was about to do, stored before the request that does it and cleared with
    /// its outcome: a worker that resumes the case after another stopped finds it and
    /// reconciles against Graph what was done, instead of doing it again or forgetting it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<Intent>,
    /// The plan version that added the action (an approval covers the versions a person saw).
    #[serde(default)]
    pub planned_in: u32,
}

/// An action a worker is about to carry out, written ahead of its request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// When the worker stored it (bounded by Graph's clock).
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The worker that stored it.
    pub by: String,
    /// For a password reset: the user's `lastPasswordChangeDateTime` before it (a later one
    /// means the reset went through).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub password_changed_before: Option<OffsetDateTime>,
    /// For a password reset: whether the new password was kept, sealed with the vault's key,
    /// beside the case (`intent#…`), so a resumed case can deliver it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sealed: bool,
    /// The request that cannot be repeated safely, when the action is about to send one (the
    /// action's module announced it right before sending): a resumed case reconciles it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// For a password reset: when Graph accepted the new password. The account is contained;
    /// the password's delivery follows once the case's other containing actions are done.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub set_at: Option<OffsetDateTime>,
}

impl CaseAction {
    /// A reset whose password Graph accepted and that is not delivered yet: it contains the
    /// account already; its delivery waits for the case's other containing actions.
    pub fn awaits_delivery(&self) -> bool {
        self.state.runnable() && self.intent.as_ref().is_some_and(|i| i.set_at.is_some())
    }

    /// A pending action of `rule`.
    pub fn pending(action: Action, rule: &str) -> Self {
        CaseAction {
            action,
            rule: rule.to_owned(),
            state: ActionState::Pending,
            attempts: 0,
            approved_by: None,
            mail_id: None,
            intent: None,
            planned_in: 0,
        }
    }
}

/// A signal as its case remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalRef {
    pub signal_id: String,
    pub source: EventSource,
    pub source_id: String,
    pub risk_level: RiskLevel,
    #[serde(with = "time::serde::rfc3339")]
    pub detected_at: OffsetDateTime,
    /// The account name the signal gave (a claim: the case names the user as the directory
    /// does, and records a claim that disagrees).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_upn: Option<String>,
}

/// The signals merged into a case: how many, by source, and the newest in detail.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalLog {
    pub count: u32,
    pub recent: Vec<SignalRef>,
}

impl SignalLog {
    fn contains(&self, signal_id: &str) -> bool {
        self.recent.iter().any(|s| s.signal_id == signal_id)
    }

    fn push(&mut self, signal: SignalRef) {
        self.count = self.count.saturating_add(1);
        self.recent.push(signal);
        if self.recent.len() > SIGNALS_KEPT {
            self.recent.remove(0);
        }
    }
}

/// A person's decision on a case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub by: String,
    /// approve, skip or retry.
    pub decision: String,
    pub reason: String,
    /// The plan version an approval covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_version: Option<u32>,
}

/// One line of a case's audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub what: String,
}

/// One user's risk episode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Case {
    pub case_id: String,
    pub tenant_id: String,
    pub user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_principal_name: Option<String>,
    pub episode: Episode,
    pub status: CaseStatus,
    /// The mode the case was planned in (a person's approval carries it out in enforce).
    pub mode: Mode,
    /// The source of the signal that opened the case (rules may be limited to sources).
    pub opened_by: EventSource,
    /// The highest risk level seen (signals and Identity Protection).
    pub risk_level: RiskLevel,
    /// The level the plan (with its escalations) covers; below `risk_level`, the worker
    /// escalates the case. `None` until planned (and in cases stored before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_level: Option<RiskLevel>,
    /// The plan's version: 1 when planned, one more with every escalation that appends
    /// actions. A person's approval names the version they saw.
    #[serde(default)]
    pub plan_version: u32,
    /// Actions that change an account were planned or appended in enforce mode and the
    /// per-tenant blast-radius rail has not admitted them yet (the worker asks the ledger).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admission_due: bool,
    /// The blast-radius rail held this case and its one alert to the SOC could not be sent:
    /// the case is retried until the alert goes out (or another case's alert did).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub blast_alert_due: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub opened_at: OffsetDateTime,
    /// When the signal that opened the case arrived (before it waited in the queue): where
    /// time-to-contain and time-to-remediate start. Cases stored before it was kept start at
    /// `opened_at`.
    #[serde(
        with = "time::serde::rfc3339::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub first_signal_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub closed_at: Option<OffsetDateTime>,
    /// When the last of its containing actions (revoke, block, reset, confirm) was done, the
    /// rest skipped: time-to-contain is this less [`Case::started_at`].
    #[serde(
        with = "time::serde::rfc3339::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub contained_at: Option<OffsetDateTime>,
    pub signals: SignalLog,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub findings: Option<Findings>,
    /// Rules that gave the plan (the first, then any escalations).
    #[serde(default)]
    pub rules: Vec<String>,
    #[serde(default)]
    pub actions: Vec<CaseAction>,
    /// Why the plan is empty, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_note: Option<String>,
    /// Safety rails that applied, in words.
    #[serde(default)]
    pub rails: Vec<String>,
    #[serde(default)]
    pub decisions: Vec<Decision>,
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
    #[serde(default)]
    pub history_dropped: u32,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The Sentinel incidents the case reports its outcome to, and where each comment stands.
    #[serde(default, skip_serializing_if = "super::incident::WriteBack::is_empty")]
    pub write_back: super::incident::WriteBack,
}

/// Who or what must act next on a case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "actor", content = "what", rename_all = "snake_case")]
pub enum NextActor {
    Worker(String),
    Person(String),
    Nobody,
}

impl std::fmt::Display for NextActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NextActor::Worker(what) => write!(f, "worker: {what}"),
            NextActor::Person(what) => write!(f, "person: {what}"),
            NextActor::Nobody => f.write_str("nobody: closed"),
        }
    }
}

impl Case {
    /// Opens a case for `signal` on `user_id`'s `episode`.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        tenant_id: &str,
        user_id: &str,
        user_principal_name: Option<String>,
        episode: Episode,
        signal: SignalRef,
        level: RiskLevel,
        mode: Mode,
        now: OffsetDateTime,
    ) -> Self {
        let mut case = Case {
            case_id: case_id(tenant_id, user_id, &episode),
            tenant_id: tenant_id.to_owned(),
            user_id: user_id.to_owned(),
            user_principal_name,
            episode,
            status: CaseStatus::New,
            mode,
            opened_by: signal.source,
            risk_level: level,
            planned_level: None,
            plan_version: 0,
            admission_due: false,
            blast_alert_due: false,
            opened_at: now,
            first_signal_at: None,
            updated_at: now,
            closed_at: None,
            contained_at: None,
            signals: SignalLog::default(),
            findings: None,
            rules: Vec::new(),
            actions: Vec::new(),
            plan_note: None,
            rails: Vec::new(),
            decisions: Vec::new(),
            history: Vec::new(),
            history_dropped: 0,
            attempts: 0,
            lease: None,
            last_error: None,
            write_back: Default::default(),
        };
        let what = format!(
            "opened by signal {} from {} ({:?})",
            signal.signal_id,
            signal.source.as_str(),
            signal.risk_level
        );
        case.signals.push(signal);
        case.note(now, what);
        case
    }

    /// Names the user as the directory does (`upn` read from Graph for the object id), and
    /// records every signal whose claimed account name disagrees with it.
    pub fn name_from_directory(&mut self, upn: Option<&str>, now: OffsetDateTime) {
        let Some(upn) = upn else {
            return;
        };
        self.user_principal_name = Some(upn.to_owned());
        let disagreeing: Vec<(String, String)> = self
            .signals
            .recent
            .iter()
            .filter_map(|s| {
                let claimed = s.claimed_upn.as_deref()?;
                (!claimed.eq_ignore_ascii_case(upn))
                    .then(|| (s.signal_id.clone(), claimed.to_owned()))
            })
            .collect();
        for (signal, claimed) in disagreeing {
            let line = format!(
                "signal {signal} named the account {claimed:?}, but the directory names object id {} {upn:?}: the directory's name is used",
                self.user_id
            );
            if !self.history.iter().any(|h| h.what == line) {
                self.note(now, line);
            }
        }
    }

    /// Appends a line to the audit trail (bounded).
    pub fn note(&mut self, at: OffsetDateTime, what: impl Into<String>) {
        self.history.push(HistoryEntry {
            at,
            what: what.into(),
        });
        if self.history.len() > HISTORY_KEPT {
            self.history.remove(0);
            self.history_dropped = self.history_dropped.saturating_add(1);
        }
        self.updated_at = at;
    }

    /// Whether nothing more happens without a new signal or a person.
    pub fn is_terminal(&self) -> bool {
        matches!(self.status, CaseStatus::Completed | CaseStatus::Skipped)
    }

    /// Whether the worker has something to do on this case: it is not settled, or a signal
    /// raised its level above what its plan covers (the worker escalates it, whatever its
    /// status).
    pub fn needs_worker(&self) -> bool {
        matches!(
            self.status,
            CaseStatus::New | CaseStatus::Open | CaseStatus::Retry | CaseStatus::NeedsOperator
        ) || self.needs_escalation()
    }

    /// Whether the case waits for the worker and no person: what the local retries take up
    /// (a case that needs an operator waits for `cases retry`).
    pub fn awaits_worker(&self) -> bool {
        matches!(
            self.status,
            CaseStatus::New | CaseStatus::Open | CaseStatus::Retry
        ) || self.needs_escalation()
    }

    /// The level the plan covers (a planned case stored before `planned_level` was kept
    /// covers its `risk_level`).
    pub fn plan_level(&self) -> Option<RiskLevel> {
        self.planned_level
            .or_else(|| self.findings.as_ref().map(|_| self.risk_level))
    }

    /// Whether the case is planned for a lower level than it has been seen at.
    pub fn needs_escalation(&self) -> bool {
        self.plan_level()
            .is_some_and(|planned| self.risk_level > planned)
    }

    /// Leaves a closed case closed when a newer case of its user runs: the level a signal
    /// raised it to goes back to what its plan covered (no escalation), and the case says why.
    pub fn decline_escalation(&mut self, newer_case: &str, now: OffsetDateTime) {
        if let Some(planned) = self.plan_level() {
            self.risk_level = planned;
        }
        self.note(
            now,
            format!(
                "not escalated: a newer case {newer_case} of this user runs, and a closed case is never reopened beside it"
            ),
        );
    }

    /// Whether `signal_id` was merged already (redelivery).
    pub fn has_signal(&self, signal_id: &str) -> bool {
        self.signals.contains(signal_id)
    }

    /// Merges a signal; returns false if it was merged before.
    pub fn merge(&mut self, signal: SignalRef, now: OffsetDateTime) -> bool {
        if self.has_signal(&signal.signal_id) {
            return false;
        }
        let what = format!(
            "signal {} from {} ({:?}) merged",
            signal.signal_id,
            signal.source.as_str(),
            signal.risk_level
        );
        self.signals.push(signal);
        self.note(now, what);
        true
    }

    /// The planned actions of `rule`, in its order.
    pub fn set_plan(&mut self, rule: Option<&Rule>, note: Option<String>, now: OffsetDateTime) {
        match rule {
            Some(rule) => {
                self.rules = vec![rule.name.clone()];
                self.actions = rule
                    .actions
                    .iter()
                    .map(|&action| CaseAction {
                        planned_in: 1,
                        ..CaseAction::pending(action, &rule.name)
                    })
                    .collect();
                let list: Vec<&str> = rule.actions.iter().map(|a| a.as_str()).collect();
                self.note(
                    now,
                    format!(
                        "planned by rule {:?} at {:?}: {}",
                        rule.name,
                        self.risk_level,
                        list.join(", ")
                    ),
                );
            }
            None => {
                self.rules.clear();
                self.actions.clear();
                self.note(
                    now,
                    format!(
                        "no action: {}",
                        note.as_deref().unwrap_or("no rule matches")
                    ),
                );
            }
        }
        self.plan_note = note;
        self.planned_level = Some(self.risk_level);
        self.plan_version = 1;
    }

    /// Raises the plan to `level` with `rule` (the rule for that level): the rule's actions
    /// that are missing (never planned, or planned and skipped) are appended as pending, done
    /// ones stay done; with a notify so the SOC hears of it. Returns the range of the appended
    /// actions, which the caller passes through the safety rails
    /// ([`crate::cases::plan::escalate_case`]); the status is left to it.
    pub fn escalate(
        &mut self,
        level: RiskLevel,
        rule: Option<&Rule>,
        now: OffsetDateTime,
    ) -> std::ops::Range<usize> {
        let end = self.actions.len();
        let Some(previous) = self.plan_level().filter(|planned| level > *planned) else {
            return end..end;
        };
        self.planned_level = Some(level);
        self.risk_level = self.risk_level.max(level);
        let Some(rule) = rule else {
            self.note(
                now,
                format!("risk rose from {previous:?} to {level:?}; no rule adds actions"),
            );
            return end..end;
        };
        let planned = |a: Action| {
            self.actions
                .iter()
                .any(|x| x.action == a && !matches!(x.state, ActionState::Skipped { .. }))
        };
        let missing: Vec<Action> = rule
            .actions
            .iter()
            .copied()
            .filter(|a| *a != Action::Notify && !planned(*a))
            .collect();
        if missing.is_empty() {
            self.note(
                now,
                format!(
                    "risk rose from {previous:?} to {level:?}; rule {:?} adds nothing",
                    rule.name
                ),
            );
            return end..end;
        }
        let mut appended = missing;
        // The SOC hears of what the escalation added.
        if rule.actions.contains(&Action::Notify) {
            appended.push(Action::Notify);
        }
        self.plan_version = self.plan_version.max(1) + 1;
        for action in &appended {
            self.actions.push(CaseAction {
                planned_in: self.plan_version,
                ..CaseAction::pending(*action, &rule.name)
            });
        }
        if !self.rules.contains(&rule.name) {
            self.rules.push(rule.name.clone());
        }
        let list: Vec<&str> = appended.iter().map(|a| a.as_str()).collect();
        self.note(
            now,
            format!(
                "escalated from {previous:?} to {level:?} by rule {:?}: appended {}",
                rule.name,
                list.join(", ")
            ),
        );
        end..self.actions.len()
    }

    /// Names `rail` among the rails that applied (once).
    pub fn add_rail(&mut self, rail: String) {
        if !self.rails.contains(&rail) {
            self.rails.push(rail);
        }
    }

    /// Holds every not-yet-done action behind `rail` (e.g. the blast-radius limit).
    pub fn hold(&mut self, rail: &str, only_account_changes: bool, now: OffsetDateTime) {
        self.hold_range(0..self.actions.len(), rail, only_account_changes, now);
    }

    /// As [`Case::hold`], for the actions in `range` only (those an escalation appended).
    pub fn hold_range(
        &mut self,
        range: std::ops::Range<usize>,
        rail: &str,
        only_account_changes: bool,
        now: OffsetDateTime,
    ) {
        let mut held = 0;
        for action in self.actions.get_mut(range).into_iter().flatten() {
            let applies = !only_account_changes || action.action.changes_account();
            if applies && matches!(action.state, ActionState::Pending | ActionState::Planned) {
                action.state = ActionState::Held {
                    rail: rail.to_owned(),
                };
                held += 1;
            }
        }
        if held > 0 {
            if !self.rails.iter().any(|r| r == rail) {
                self.rails.push(rail.to_owned());
            }
            self.note(now, format!("{held} action(s) held: {rail}"));
        }
    }

    /// The Identity Protection state our own done actions leave the user in, if any.
    pub fn expected_risk_state(&self) -> Option<&'static str> {
        self.actions
            .iter()
            .filter(|a| matches!(a.state, ActionState::Done { .. }))
            .filter_map(|a| match a.action {
                Action::ConfirmCompromised => Some("confirmedCompromised"),
                Action::DismissRisk => Some("dismissed"),
                Action::ResetPassword => Some("remediated"),
                _ => None,
            })
            .next_back()
    }

    /// Sets the status from the actions' states after the worker's run.
    pub fn settle(&mut self, now: OffsetDateTime) {
        let any = |f: &dyn Fn(&ActionState) -> bool| self.actions.iter().any(|a| f(&a.state));
        let status = if any(&|s| {
            matches!(
                s,
                ActionState::Failed {
                    needs_operator: true,
                    ..
                }
            )
        }) {
            CaseStatus::NeedsOperator
        } else if any(&|s| matches!(s, ActionState::Failed { .. })) {
            CaseStatus::Retry
        } else if any(&|s| matches!(s, ActionState::Pending)) {
            CaseStatus::Open
        } else if self.blast_alert_due {
            // Everything else waits or is done, but the SOC has not been told.
            CaseStatus::Retry
        } else if any(&|s| matches!(s, ActionState::Held { .. })) {
            CaseStatus::AwaitingApproval
        } else if self.status == CaseStatus::Skipped {
            // A person closed it; nothing was reopened since.
            CaseStatus::Skipped
        } else {
            CaseStatus::Completed
        };
        if status != self.status {
            self.note(now, format!("status {}", status.as_str()));
        }
        self.status = status;
        self.note_containment(now);
        if matches!(status, CaseStatus::Completed | CaseStatus::Skipped) {
            if self.closed_at.is_none() {
                self.note(
                    now,
                    format!(
                        "closed {} after its first signal arrived",
                        crate::support::clock::plain(now - self.started_at())
                    ),
                );
            }
            self.closed_at.get_or_insert(now);
            self.last_error = None;
        } else {
            self.closed_at = None;
        }
    }

    /// Records when the case was contained: every containing action done or skipped (a reset
    /// counts once its password is set, before it is delivered), at least one done. Once only
    /// (an escalation's later actions do not move it).
    pub fn note_containment(&mut self, now: OffsetDateTime) {
        if self.contained_at.is_some() {
            return;
        }
        let containing: Vec<(bool, bool)> = self
            .actions
            .iter()
            .filter(|a| a.action.contains())
            .map(|a| {
                let done = matches!(a.state, ActionState::Done { .. }) || a.awaits_delivery();
                (done, done || matches!(a.state, ActionState::Skipped { .. }))
            })
            .collect();
        if containing.iter().any(|(done, _)| *done) && containing.iter().all(|(_, over)| *over) {
            self.contained_at = Some(now);
            self.note(
                now,
                format!(
                    "contained {} after its first signal arrived",
                    crate::support::clock::plain(now - self.started_at())
                ),
            );
        }
    }

    /// Where the case's clocks start: its first signal's arrival (or its opening, for a case
    /// stored before arrivals were kept, or opened without a stored signal).
    pub fn started_at(&self) -> OffsetDateTime {
        self.first_signal_at
            .filter(|at| *at <= self.opened_at)
            .unwrap_or(self.opened_at)
    }

    /// Time from the first signal's arrival to the case's containment, once contained.
    pub fn time_to_contain(&self) -> Option<time::Duration> {
        self.contained_at.map(|t| t - self.started_at())
    }

    /// Time from the first signal's arrival to the case's closing (completed or skipped: what
    /// the SOC calls time-to-remediate), once closed.
    pub fn time_to_close(&self) -> Option<time::Duration> {
        self.closed_at.map(|t| t - self.started_at())
    }

    /// Counts the run that just ended: one more failed attempt if it leaves the case in
    /// `retry`, none left if it moved on. Only failed runs count towards the local retries'
    /// limit; runs that did their work (escalations, waves, decisions carried out) do not.
    pub fn count_attempt(&mut self) {
        self.attempts = if self.status == CaseStatus::Retry {
            self.attempts.saturating_add(1)
        } else {
            0
        };
    }

    /// Who or what must act next.
    pub fn next_actor(&self) -> NextActor {
        match self.status {
            CaseStatus::New => NextActor::Worker("investigate and plan".into()),
            CaseStatus::Open => NextActor::Worker("carry out the pending actions".into()),
            CaseStatus::Retry => NextActor::Worker(format!(
                "retry after a transient failure: {}",
                self.last_error.as_deref().unwrap_or("-")
            )),
            CaseStatus::NeedsOperator => NextActor::Person(format!(
                "fix what refused the action, then `cases retry {}`: {}",
                self.case_id,
                self.last_error.as_deref().unwrap_or("-")
            )),
            CaseStatus::AwaitingApproval => NextActor::Person(format!(
                "`cases approve {0}` or `cases skip {0} --reason ...` ({1})",
                self.case_id,
                self.rails.join("; ")
            )),
            CaseStatus::Completed | CaseStatus::Skipped => NextActor::Nobody,
        }
    }
}

#[cfg(test)]
#[path = "case_tests.rs"]
mod tests;
