//! Which case a signal belongs to. The episode is Identity Protection's: a user's signals merge
//! into the case opened for the risk record as it was, until Identity Protection reports a
//! newer risk update that our own actions do not explain. A source's own detection (no
//! Identity Protection risk) is its own episode for the policy's window.

use time::OffsetDateTime;

use super::case::{Case, Episode, SignalRef};
use super::findings::RiskRecord;
use crate::event::EventSource;

/// How long after a case closed Identity Protection may still stamp the update our own last
/// action caused (`riskLastUpdatedDateTime` of the confirm): a newer update is a new episode.
pub const OWN_UPDATE_LAG: time::Duration = time::Duration::minutes(15);

/// Where a signal goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Into this existing case (open, or closed with the same episode).
    Merge(String),
    /// Into a new case for this episode.
    Open(Episode),
    /// Into no case: the user is not at risk and the signal carries no detection of its own.
    NoCase(String),
}

/// Whether a signal carries a detection of its own (as opposed to a hint to look at the
/// user, like a `users` change notification).
fn own_detection(source: EventSource) -> bool {
    matches!(source, EventSource::Sentinel)
}

/// Decides where `signal` goes, given Identity Protection's `risk` record of the user (if any),
/// the user's `current` (latest) case, the source-episode window, and the time.
pub fn place(
    signal: &SignalRef,
    risk: Option<&RiskRecord>,
    current: Option<&Case>,
    source_window: time::Duration,
    now: OffsetDateTime,
) -> Placement {
    // An open case, or a closed one a signal has raised and the worker is about to escalate
    // (it opens again): a new case beside it would run twice for one user.
    if let Some(case) = current.filter(|c| !c.is_terminal() || c.needs_escalation()) {
        return Placement::Merge(case.case_id.clone());
    }
    let closed_at = current.and_then(|c| c.closed_at.or(Some(c.updated_at)));
    match risk.filter(|r| r.at_risk()) {
        Some(risk) => {
            if let Some(case) = current {
                // The state our own last action leaves (confirmCompromised), updated when we
                // acted or shortly after the case closed (Identity Protection's own lag): not a
                // new detection. A later update in that state is one.
                let ours = case.expected_risk_state() == Some(risk.risk_state.as_str())
                    && match (risk.last_updated, closed_at) {
                        (Some(updated), Some(closed)) => updated <= closed + OWN_UPDATE_LAG,
                        _ => true,
                    };
                // Unchanged for this episode: no update after the case closed (an update while
                // it was open, waiting for an operator or a person, is what the case is about).
                let unchanged = match &case.episode {
                    Episode::IdentityProtection {
                        risk_last_updated, ..
                    } => risk.last_updated <= (*risk_last_updated).max(closed_at),
                    Episode::Source { .. } => risk.last_updated <= closed_at,
                };
                if ours || unchanged {
                    return Placement::Merge(case.case_id.clone());
                }
            }
            Placement::Open(Episode::IdentityProtection {
                risk_last_updated: risk.last_updated,
                risk_state: risk.risk_state.clone(),
            })
        }
        None => {
            let state = risk.map_or("no record", |r| r.risk_state.as_str());
            if let Some(case) = current {
                let same_source = matches!(&case.episode,
                    Episode::Source { source_id, .. } if *source_id == signal.source_id);
                let in_window = matches!(case.episode, Episode::Source { .. })
                    && now < case.opened_at + source_window;
                let before_close = closed_at.is_some_and(|t| signal.detected_at <= t);
                if same_source || (own_detection(signal.source) && in_window) || before_close {
                    return Placement::Merge(case.case_id.clone());
                }
            }
            if own_detection(signal.source) {
                Placement::Open(Episode::Source {
                    source: signal.source,
                    source_id: signal.source_id.clone(),
                })
            } else {
                Placement::NoCase(format!(
                    "Identity Protection reports no risk for the user (riskState {state})"
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cases::case::{ActionState, CaseAction, CaseStatus};
    use crate::cases::policy::{Action, Mode};
    use crate::event::RiskLevel;

    fn at(minutes: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_795_000_000 + minutes * 60).unwrap()
    }

    fn signal(source: EventSource, source_id: &str, detected: i64) -> SignalRef {
        SignalRef {
            signal_id: format!("s-{source_id}-{detected}"),
            source,
            source_id: source_id.into(),
            risk_level: RiskLevel::High,
            detected_at: at(detected),
            claimed_upn: None,
        }
    }

    fn risk(state: &str, updated: i64) -> RiskRecord {
        RiskRecord {
            risk_level: "high".into(),
            risk_state: state.into(),
            risk_detail: None,
            last_updated: Some(at(updated)),
        }
    }

    fn closed_case(episode: Episode, done: &[Action], closed: i64) -> Case {
        let mut case = Case::open(
            "t",
            "u",
            None,
            episode,
            signal(EventSource::Sentinel, "a", 0),
            RiskLevel::High,
            Mode::Enforce,
            at(0),
        );
        case.actions = done
            .iter()
            .map(|&action| CaseAction {
                approved_by: None,
                mail_id: None,
                intent: None,
                planned_in: 1,
                action,
                rule: "r".into(),
                state: ActionState::Done {
                    at: at(closed),
                    detail: None,
                },
                attempts: 1,
            })
            .collect();
        case.status = CaseStatus::Completed;
        case.closed_at = Some(at(closed));
        case
    }

    fn ip(updated: i64) -> Episode {
        Episode::IdentityProtection {
            risk_last_updated: Some(at(updated)),
            risk_state: "atRisk".into(),
        }
    }

    const DAY: time::Duration = time::Duration::hours(24);

    #[test]
    fn first_signal_for_a_user_at_risk_opens_an_identity_protection_episode() {
        let p = place(
            &signal(EventSource::GraphUser, "n", 0),
            Some(&risk("atRisk", -3)),
            None,
            DAY,
            at(0),
        );
        assert_eq!(p, Placement::Open(ip(-3)));
    }

    #[test]
    fn an_open_case_takes_every_signal() {
        let mut case = closed_case(ip(-3), &[], 0);
        case.status = CaseStatus::Retry;
        case.closed_at = None;
        let p = place(
            &signal(EventSource::GraphUser, "n", 5),
            None,
            Some(&case),
            DAY,
            at(5),
        );
        assert_eq!(p, Placement::Merge(case.case_id));
    }

    #[test]
    fn confirmed_compromised_by_us_stays_the_same_episode() {
        let case = closed_case(ip(-3), &[Action::ConfirmCompromised], 2);
        // Identity Protection updated the record when we confirmed it.
        let p = place(
            &signal(EventSource::GraphUser, "n", 30),
            Some(&risk("confirmedCompromised", 3)),
            Some(&case),
            DAY,
            at(30),
        );
        assert_eq!(p, Placement::Merge(case.case_id));
    }

    #[test]
    fn a_new_detection_of_a_user_we_confirmed_compromised_opens_a_new_episode() {
        let case = closed_case(ip(-3), &[Action::ConfirmCompromised], 2);
        // Still confirmedCompromised (nobody dismissed it), but Identity Protection updated the
        // record an hour after the case closed: a new detection, not our confirm.
        let p = place(
            &signal(EventSource::GraphUser, "n", 90),
            Some(&risk("confirmedCompromised", 62)),
            Some(&case),
            DAY,
            at(90),
        );
        assert!(matches!(p, Placement::Open(_)), "{p:?}");
    }

    #[test]
    fn an_unchanged_record_stays_the_same_episode() {
        let case = closed_case(ip(-3), &[Action::RevokeSessions], 2);
        let p = place(
            &signal(EventSource::Sentinel, "b", 30),
            Some(&risk("atRisk", -3)),
            Some(&case),
            DAY,
            at(30),
        );
        assert_eq!(p, Placement::Merge(case.case_id));
    }

    #[test]
    fn an_update_while_the_case_was_open_is_the_same_episode() {
        // The case sat in needs_operator from minute 0 to 40; Identity Protection updated the
        // record at minute 20; the case closed at minute 40.
        let case = closed_case(ip(-3), &[Action::RevokeSessions, Action::Notify], 40);
        let p = place(
            &signal(EventSource::GraphUser, "n", 60),
            Some(&risk("atRisk", 20)),
            Some(&case),
            DAY,
            at(60),
        );
        assert_eq!(p, Placement::Merge(case.case_id.clone()));
        // An update after it closed is a new episode.
        let p = place(
            &signal(EventSource::GraphUser, "n", 60),
            Some(&risk("atRisk", 41)),
            Some(&case),
            DAY,
            at(60),
        );
        assert_eq!(p, Placement::Open(ip(41)));
    }

    #[test]
    fn a_newer_risk_update_after_close_opens_a_new_episode() {
        let case = closed_case(ip(-3), &[Action::DismissRisk], 2);
        let p = place(
            &signal(EventSource::GraphUser, "n", 60),
            Some(&risk("atRisk", 50)),
            Some(&case),
            DAY,
            at(60),
        );
        assert_eq!(p, Placement::Open(ip(50)));
    }

    #[test]
    fn a_users_notification_for_a_user_not_at_risk_opens_nothing() {
        let p = place(
            &signal(EventSource::GraphUser, "n", 0),
            Some(&risk("remediated", -3)),
            None,
            DAY,
            at(0),
        );
        assert!(matches!(p, Placement::NoCase(reason) if reason.contains("remediated")));
    }

    #[test]
    fn a_sentinel_detection_without_a_record_is_its_own_episode_for_the_window() {
        let p = place(
            &signal(EventSource::Sentinel, "alert-9", 0),
            None,
            None,
            DAY,
            at(0),
        );
        let episode = Episode::Source {
            source: EventSource::Sentinel,
            source_id: "alert-9".into(),
        };
        assert_eq!(p, Placement::Open(episode.clone()));
        let case = closed_case(episode, &[Action::RevokeSessions], 2);
        // Another alert within the window joins it; after the window it opens a new case.
        let later = signal(EventSource::Sentinel, "alert-10", 120);
        assert_eq!(
            place(&later, None, Some(&case), DAY, at(120)),
            Placement::Merge(case.case_id.clone())
        );
        let much_later = signal(EventSource::Sentinel, "alert-11", 3000);
        assert!(matches!(
            place(&much_later, None, Some(&case), DAY, at(3000)),
            Placement::Open(Episode::Source { .. })
        ));
        // A late copy of the alert we handled stays with its case.
        let late_copy = signal(EventSource::Sentinel, "alert-9", 3000);
        assert_eq!(
            place(&late_copy, None, Some(&case), DAY, at(3000)),
            Placement::Merge(case.case_id)
        );
    }

    #[test]
    fn a_late_alert_about_what_we_already_remediated_opens_nothing_new() {
        let case = closed_case(ip(-3), &[Action::ResetPassword, Action::DismissRisk], 10);
        let late = signal(EventSource::Sentinel, "alert-2", 5);
        let p = place(
            &late,
            Some(&risk("dismissed", 10)),
            Some(&case),
            DAY,
            at(400),
        );
        assert_eq!(p, Placement::Merge(case.case_id));
    }

    #[test]
    fn a_closed_case_about_to_be_escalated_takes_the_next_signal() {
        // Closed at minute 10, planned for Medium, raised to High by a signal: the worker is
        // about to reopen it. A newer detection now merges into it instead of opening a second
        // case beside it.
        let mut case = closed_case(ip(-3), &[Action::RevokeSessions], 10);
        case.planned_level = Some(RiskLevel::Medium);
        case.risk_level = RiskLevel::High;
        assert!(case.needs_escalation());
        let p = place(
            &signal(EventSource::GraphUser, "n", 20),
            Some(&risk("atRisk", 15)),
            Some(&case),
            DAY,
            at(20),
        );
        assert_eq!(p, Placement::Merge(case.case_id.clone()));
        // Settled at its plan's level, the same detection opens a new episode.
        case.risk_level = RiskLevel::Medium;
        let p = place(
            &signal(EventSource::GraphUser, "n", 20),
            Some(&risk("atRisk", 15)),
            Some(&case),
            DAY,
            at(20),
        );
        assert_eq!(p, Placement::Open(ip(15)));
    }
}
