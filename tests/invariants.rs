//! The promises under an attacker and an unlucky production day: a caller acts only within its
//! tenant, the plan and every intent are stored before what they lead to, rails and people's
//! decisions hold when each action runs, the directory names the user, listings always move
//! forward, and a fast clock cannot poison shared state. Each test drives the product (the
//! worker's handlers, or the binary) against the Graph stand-in.

mod common;
mod graph_standin;

use graph_standin::*;
use risk_responder::event::{Origin, OriginKind, RiskLevel, Subject};
use risk_responder::queue::WorkItem;
use risk_responder::respond::Disposition;

/// A second tenant the deployment serves.
const TENANT_B: &str = "2c1d8d6e-5a4b-4c3d-9e8f-7a6b5c4d3e2f";

fn sentinel_signal(id: &str, origin: Option<Origin>) -> WorkItem {
    let WorkItem::Risk(mut signal) = adele_item(id) else {
        unreachable!("adele_item is a risk signal")
    };
    signal.origin = origin;
    WorkItem::Risk(signal)
}

/// 1. Tenant isolation, checked again by the worker: a queue message whose caller is bound to
///    tenant B but names a user of tenant A changes nothing in A.
#[tokio::test]
async fn the_worker_refuses_a_signal_outside_its_callers_tenants() {
    let s = start().await;
    seed(&s, "high", "atRisk", 2);
    let ledger = memory_ledger();
    let mut worker = enforcing_worker(&s, ledger.clone(), 2);
    worker.allowed_tenants = vec![TENANT.to_owned(), TENANT_B.to_owned()];
    let forged = Origin {
        via: OriginKind::EntraId,
        by: "3f1b6b2e-94a4-4a53-8e36-0c8c5f8f2a11".into(),
        tenants: vec![TENANT_B.to_owned()],
    };
    let disposition = worker
        .handle(&sentinel_signal("sig-foreign", Some(forged)))
        .await;
    let Disposition::Done(why) = disposition else {
        panic!("dropped, not retried: {disposition:?}");
    };
    assert!(why.contains("may not name"), "{why}");
    assert!(s.writes().is_empty(), "nothing changed: {:?}", s.writes());
    assert!(ledger.find_case("sig-foreign").await.unwrap().is_none());
    // The same signal from a caller bound to tenant A is worked.
    let own = Origin {
        via: OriginKind::EntraId,
        by: "3f1b6b2e-94a4-4a53-8e36-0c8c5f8f2a11".into(),
        tenants: vec![TENANT.to_owned()],
    };
    worker.handle(&sentinel_signal("sig-own", Some(own))).await;
    assert!(ledger.find_case("sig-own").await.unwrap().is_some());
    assert_eq!(revokes(&s), 1);
}

/// Runs `worker` on `item` until Graph has received the password `PATCH`, then drops it there:
/// the worker's process dies after the reset, before its mail (stalled) and its next record.
async fn kill_after_the_patch(
    s: &StandIn,
    worker: risk_responder::respond::Worker,
    item: WorkItem,
) {
    s.with(|d| d.faults.stall_mail = true);
    let task = tokio::spawn(async move { worker.handle(&item).await });
    for _ in 0..500 {
        if resets(s) > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(resets(s), 1, "the PATCH went out");
    // Let the worker reach its stalled mail, then kill it.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    s.with(|d| d.faults.stall_mail = false);
}

/// The killed worker's lease runs out, so the redelivery reaches another worker.
async fn expire_lease(ledger: &risk_responder::ledger::Ledger, signal: &str) {
    let (mut case, version) = ledger.find_case(signal).await.unwrap().unwrap();
    if let Some(lease) = case.lease.as_mut() {
        lease.until = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    }
    ledger.save_case(&case, version).await.unwrap().unwrap();
}

/// 2. A worker killed between the password PATCH and its first record: the plan and the
///    intent were stored before the PATCH, so the worker that resumes the case does not plan it
///    again (Identity Protection now says the user is remediated: a fresh plan would do
///    nothing), finds in Graph's `lastPasswordChangeDateTime` that the reset went through, and
///    delivers the password that was set (from its sealed copy): one reset, one password mail
///    holding the password the user has, the SOC told.
#[tokio::test]
async fn a_reset_whose_worker_died_is_delivered_not_repeated_nor_forgotten() {
    let s = start().await;
    seed(&s, "high", "atRisk", 2);
    let ledger = memory_ledger();
    let item = sentinel_signal("sig-killed", None);
    kill_after_the_patch(&s, enforcing_worker(&s, ledger.clone(), 2), item.clone()).await;
    let (case, _) = ledger.find_case("sig-killed").await.unwrap().unwrap();
    assert!(
        case.findings.is_some(),
        "the plan was stored before the first action"
    );
    let reset = case
        .actions
        .iter()
        .find(|a| a.action == risk_responder::cases::Action::ResetPassword)
        .unwrap();
    let intent = reset
        .intent
        .as_ref()
        .expect("the intent was stored before the PATCH");
    assert!(intent.sealed && intent.request.is_some(), "{intent:?}");
    assert!(
        password_mail_bodies(&s).is_empty(),
        "killed before its mail"
    );

    expire_lease(&ledger, "sig-killed").await;
    let survivor = enforcing_worker(&s, ledger.clone(), 2);
    let disposition = survivor.handle(&item).await;
    assert!(!disposition.is_retry(), "{disposition:?}");
    let (case, _) = ledger.find_case("sig-killed").await.unwrap().unwrap();
    assert_eq!(
        case.status,
        risk_responder::cases::CaseStatus::Completed,
        "{case:#?}"
    );
    assert_eq!(resets(&s), 1, "the reset is not repeated");
    let mails = password_mail_bodies(&s);
    assert_eq!(mails.len(), 1);
    assert_eq!(
        Some(mailed_password(&mails[0])),
        current_password(&s, ADELE),
        "the helpdesk holds the password the user has"
    );
    let reset = case
        .actions
        .iter()
        .find(|a| a.action == risk_responder::cases::Action::ResetPassword)
        .unwrap();
    let risk_responder::cases::case::ActionState::Done { detail, .. } = &reset.state else {
        panic!("{reset:?}");
    };
    assert!(
        detail
            .as_deref()
            .unwrap()
            .contains("by a worker that stopped"),
        "{detail:?}"
    );
    assert!(reset.intent.is_none(), "the outcome replaced the intent");
    let index = case
        .actions
        .iter()
        .position(|a| a.action == risk_responder::cases::Action::ResetPassword)
        .unwrap();
    assert!(
        ledger
            .sealed_intent(&case.case_id, index)
            .await
            .unwrap()
            .is_none(),
        "the sealed copy is gone once delivered"
    );
    let soc = mail_subjects(&s)
        .iter()
        .filter(|m| m.starts_with("risk-responder:"))
        .count();
    assert_eq!(soc, 1, "the SOC is told, once");
}

/// 2. The same, without a sealing key: the password that was set cannot be recovered, so a new
///    one is set and delivered, and the case records both and why. Never a user left with a
///    password nobody holds.
#[tokio::test]
async fn a_reset_that_cannot_be_recovered_is_replaced_and_both_are_recorded() {
    let s = start().await;
    seed(&s, "high", "atRisk", 2);
    let ledger = memory_ledger();
    let item = sentinel_signal("sig-unsealed", None);
    let mut doomed = enforcing_worker(&s, ledger.clone(), 2);
    doomed.sealer = None;
    kill_after_the_patch(&s, doomed, item.clone()).await;
    expire_lease(&ledger, "sig-unsealed").await;
    let mut survivor = enforcing_worker(&s, ledger.clone(), 2);
    survivor.sealer = None;
    survivor.handle(&item).await;
    let (case, _) = ledger.find_case("sig-unsealed").await.unwrap().unwrap();
    assert_eq!(resets(&s), 2, "replaced");
    let mails = password_mail_bodies(&s);
    assert_eq!(mails.len(), 1, "only the password the user holds is mailed");
    assert_eq!(
        Some(mailed_password(&mails[0])),
        current_password(&s, ADELE)
    );
    let history: Vec<&str> = case.history.iter().map(|h| h.what.as_str()).collect();
    assert!(
        history
            .iter()
            .any(|h| h.contains("cannot be recovered") && h.contains("a new one is set")),
        "{history:#?}"
    );
}

/// The embedded policy in enforce mode with `safety` as its `[safety]` section.
fn enforcing_with(safety: &str) -> risk_responder::cases::Policy {
    let text = risk_responder::cases::policy::DEFAULT_POLICY
        .replace("mode = \"report-only\"", "mode = \"enforce\"");
    let without = text.split("\n[safety]").next().unwrap();
    risk_responder::cases::Policy::from_toml(&format!("{without}\n[safety]\n{safety}\n")).unwrap()
}

fn action_state(
    case: &risk_responder::cases::Case,
    action: risk_responder::cases::Action,
) -> &risk_responder::cases::case::ActionState {
    &case
        .actions
        .iter()
        .find(|a| a.action == action)
        .unwrap_or_else(|| panic!("{action:?} in {case:#?}"))
        .state
}

/// 3. Protection is decided when each action runs: a case left in `retry` whose user an
///    operator has since added to a protected group is not reset by the automatic retry; what
///    would change the account waits for a person.
#[tokio::test]
async fn a_user_protected_since_the_plan_is_not_reset_by_the_retry() {
    use risk_responder::cases::Action;
    use risk_responder::cases::case::ActionState;
    const TIER0: &str = "0c0c0c0c-0000-4000-8000-00000000c0de";
    let s = start().await;
    seed(&s, "high", "atRisk", 2);
    s.with(|d| {
        d.groups.push(TIER0.into());
        // Sessions cannot be revoked for now: the case goes to retry before its reset.
        d.faults.unavailable_paths.push((
            reqwest::Method::POST,
            format!("/users/{ADELE}/revokeSignInSessions"),
        ));
    });
    let ledger = memory_ledger();
    let policy = enforcing_with(&format!("protected_group_ids = [\"{TIER0}\"]"));
    let item = sentinel_signal("sig-protected-later", None);
    worker_with(&s, ledger.clone(), policy.clone(), 1)
        .handle(&item)
        .await;
    let (case, _) = ledger
        .find_case("sig-protected-later")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        case.status,
        risk_responder::cases::CaseStatus::Retry,
        "{case:#?}"
    );
    assert_eq!(resets(&s), 0);

    // An operator adds Adele to the protected group; Graph recovers; the retry comes.
    s.with(|d| {
        d.member_of.insert(ADELE.into(), vec![TIER0.into()]);
        d.faults.unavailable_paths.clear();
    });
    expire_lease(&ledger, "sig-protected-later").await;
    worker_with(&s, ledger.clone(), policy, 1)
        .handle(&item)
        .await;
    let (case, _) = ledger
        .find_case("sig-protected-later")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        resets(&s),
        0,
        "a protected account is not reset without a person"
    );
    assert_eq!(revokes(&s), 0);
    for action in [
        Action::RevokeSessions,
        Action::ResetPassword,
        Action::BlockSignIn,
        Action::ConfirmCompromised,
    ] {
        assert!(
            matches!(action_state(&case, action), ActionState::Held { rail } if rail.contains("protected")),
            "{action:?}: {case:#?}"
        );
    }
    assert_eq!(
        case.status,
        risk_responder::cases::CaseStatus::AwaitingApproval
    );
}

/// 4. An approval covers the plan version the person saw: a break-glass account's Medium plan
///    is held; a High alert then appends block and confirm (version 2); approving version 1
///    carries out what version 1 held, never the block and the confirm nobody saw.
#[tokio::test]
async fn an_approval_covers_only_the_plan_version_the_person_saw() {
    use risk_responder::cases::Action;
    use risk_responder::cases::case::ActionState;
    use risk_responder::respond::decide::{Choice, decide};
    let s = start().await;
    seed(&s, "medium", "atRisk", 2);
    let ledger = memory_ledger();
    let policy = enforcing_with(&format!("protected_user_ids = [\"{ADELE}\"]"));
    let worker = worker_with(&s, ledger.clone(), policy, 2);
    let mut medium = sentinel_signal("sig-medium", None);
    if let WorkItem::Risk(e) = &mut medium {
        e.risk_level = RiskLevel::Medium;
    }
    worker.handle(&medium).await;
    let (case, _) = ledger.find_case("sig-medium").await.unwrap().unwrap();
    assert_eq!(case.plan_version, 1);
    // The reviewer reads version 1. Meanwhile a High alert escalates the held case.
    s.with(|d| {
        d.risky_users.get_mut(ADELE).unwrap()["riskLevel"] = "high".into();
    });
    worker.handle(&sentinel_signal("sig-high", None)).await;
    let (case, _) = ledger.find_case("sig-medium").await.unwrap().unwrap();
    assert_eq!(case.plan_version, 2, "{case:#?}");
    let now = time::OffsetDateTime::now_utc();
    let decided = decide(
        &ledger,
        "sig-medium",
        Choice::Approve { plan_version: 1 },
        "alice",
        "verified with the user",
        now,
    )
    .await
    .unwrap();
    assert!(decided.approval.unwrap().still_held >= 2);
    worker
        .handle(&WorkItem::Resume {
            tenant_id: TENANT.into(),
            case_id: decided.case.case_id.clone(),
        })
        .await;
    let (case, _) = ledger.find_case("sig-medium").await.unwrap().unwrap();
    assert_eq!(resets(&s), 1, "version 1's reset ran");
    for action in [Action::BlockSignIn, Action::ConfirmCompromised] {
        assert!(
            matches!(action_state(&case, action), ActionState::Held { .. }),
            "{action:?} was added in version 2 and stays held: {case:#?}"
        );
    }
    assert!(
        s.with(|d| d
            .user_patches
            .iter()
            .all(|(_, p)| !p.contains(&"accountEnabled".to_owned()))),
        "the break-glass account was never blocked"
    );
    // Approving a version that does not exist is refused with what to do.
    let err = decide(
        &ledger,
        "sig-medium",
        Choice::Approve { plan_version: 9 },
        "alice",
        "typo",
        now,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("plan version 2") && err.contains("cases show"),
        "{err}"
    );
}

/// Makes the first two writes of a case wait for each other: two people who both read the
/// case before either decision is stored.
struct BothReadFirst(tokio::sync::Barrier);

#[async_trait::async_trait]
impl common::hooked_store::StoreHooks for BothReadFirst {
    async fn before_put(&self, key: &str, _doc: &str) {
        if key.starts_with("case#") {
            self.0.wait().await;
        }
    }
}

/// Two people decide at once (both read the case, then both write): one decision wins, the
/// other hears a conflict that says what to do (never both believing theirs was recorded).
#[tokio::test]
async fn of_two_concurrent_decisions_one_wins_and_the_other_is_refused() {
    use risk_responder::respond::decide::{Choice, DecideError, decide};
    let s = start().await;
    seed(&s, "high", "atRisk", 2);
    let inner: std::sync::Arc<dyn risk_responder::ledger::Store> =
        std::sync::Arc::new(risk_responder::ledger::sqlite::SqliteStore::in_memory().unwrap());
    let ledger = risk_responder::ledger::Ledger::new(inner.clone());
    let policy = enforcing_with(&format!("protected_user_ids = [\"{ADELE}\"]"));
    worker_with(&s, ledger.clone(), policy, 2)
        .handle(&sentinel_signal("sig-two-people", None))
        .await;
    let racing = risk_responder::ledger::Ledger::new(std::sync::Arc::new(
        common::hooked_store::HookedStore::new(inner, BothReadFirst(tokio::sync::Barrier::new(2))),
    ));
    let now = time::OffsetDateTime::now_utc();
    let (a, b) = tokio::join!(
        decide(
            &racing,
            "sig-two-people",
            Choice::Approve { plan_version: 1 },
            "alice",
            "verified",
            now
        ),
        decide(
            &racing,
            "sig-two-people",
            Choice::Skip,
            "bob",
            "travel",
            now
        ),
    );
    let lost = match (a, b) {
        (Ok(_), Err(lost)) | (Err(lost), Ok(_)) => lost,
        other => panic!("exactly one decision wins: {other:?}"),
    };
    assert!(matches!(lost, DecideError::Conflict { .. }), "{lost}");
    assert!(lost.to_string().contains("decide again"), "{lost}");
    let (case, _) = ledger.find_case("sig-two-people").await.unwrap().unwrap();
    assert_eq!(case.decisions.len(), 1);
}

/// Skips the case as `cases skip` does, when a worker is about to store the round that would
/// reset the password: what a person decided while the worker held the case.
struct SkipBeforeTheReset {
    inner: std::sync::Arc<dyn risk_responder::ledger::Store>,
    done: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl common::hooked_store::StoreHooks for SkipBeforeTheReset {
    async fn before_put(&self, key: &str, doc: &str) {
        use risk_responder::cases::Action;
        use risk_responder::cases::case::ActionState;
        use std::sync::atomic::Ordering;
        let Ok(case) = serde_json::from_str::<risk_responder::cases::Case>(doc) else {
            return;
        };
        let revoked = case.actions.iter().any(|a| {
            a.action == Action::RevokeSessions && matches!(a.state, ActionState::Done { .. })
        });
        if key.starts_with("case#") && revoked && !self.done.swap(true, Ordering::SeqCst) {
            let ledger = risk_responder::ledger::Ledger::new(self.inner.clone());
            risk_responder::respond::decide::decide(
                &ledger,
                &case.case_id,
                risk_responder::respond::decide::Choice::Skip,
                "alice",
                "known travel, confirmed by phone",
                time::OffsetDateTime::now_utc(),
            )
            .await
            .expect("a skip is taken while a worker holds the case");
        }
    }
}

/// 5. A person's skip while a worker holds the case stops the worker at its next step: the
///    sessions it already revoked stay revoked, but no reset, no password mail, and the case
///    reads skipped with the person's reason.
#[tokio::test]
async fn a_skip_while_a_worker_holds_the_case_stops_it() {
    use risk_responder::cases::Action;
    use risk_responder::cases::case::ActionState;
    let s = start().await;
    seed(&s, "high", "atRisk", 2);
    let inner: std::sync::Arc<dyn risk_responder::ledger::Store> =
        std::sync::Arc::new(risk_responder::ledger::sqlite::SqliteStore::in_memory().unwrap());
    let hooked = std::sync::Arc::new(common::hooked_store::HookedStore::new(
        inner.clone(),
        SkipBeforeTheReset {
            inner: inner.clone(),
            done: Default::default(),
        },
    ));
    let worker = enforcing_worker(&s, risk_responder::ledger::Ledger::new(hooked.clone()), 2);
    worker.handle(&sentinel_signal("sig-skipped", None)).await;
    assert!(hooked.hooks.done.load(std::sync::atomic::Ordering::SeqCst));
    let (case, _) = risk_responder::ledger::Ledger::new(inner)
        .find_case("sig-skipped")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resets(&s), 0, "{case:#?}");
    assert!(password_mail_bodies(&s).is_empty());
    assert_eq!(case.status, risk_responder::cases::CaseStatus::Skipped);
    assert!(matches!(
        action_state(&case, Action::RevokeSessions),
        ActionState::Done { .. }
    ));
    assert!(
        matches!(action_state(&case, Action::ResetPassword), ActionState::Skipped { reason, .. } if reason.contains("known travel")),
        "{case:#?}"
    );
}

/// 6. The directory names the user: an alert whose object id is Adele's but whose UPN claims
///    someone else resets Adele, and every word about it (the password mail, the case) names
///    Adele as the directory does; the case records the claim that disagreed.
#[tokio::test]
async fn the_directory_names_the_user_not_the_signal() {
    let s = start().await;
    seed(&s, "high", "atRisk", 2);
    let ledger = memory_ledger();
    let mut item = sentinel_signal("sig-named", None);
    if let WorkItem::Risk(e) = &mut item {
        e.subject = Subject::User {
            id: Some(ADELE.into()),
            upn: Some("mallory@contoso.onmicrosoft.com".into()),
        };
    }
    enforcing_worker(&s, ledger.clone(), 2).handle(&item).await;
    let (case, _) = ledger.find_case("sig-named").await.unwrap().unwrap();
    assert_eq!(case.user_principal_name.as_deref(), Some(ADELE_UPN));
    let subjects = mail_subjects(&s);
    assert!(
        subjects
            .iter()
            .any(|m| m == &format!("Temporary password for {ADELE_UPN}")),
        "{subjects:?}"
    );
    assert!(
        !subjects.iter().any(|m| m.contains("mallory")),
        "{subjects:?}"
    );
    assert!(
        case.history.iter().any(|h| h
            .what
            .contains("named the account \"mallory@contoso.onmicrosoft.com\"")),
        "{:#?}",
        case.history
    );
}

/// A signal about Adele at `level`, from Sentinel.
fn signal_at(id: &str, level: RiskLevel) -> WorkItem {
    let mut item = sentinel_signal(id, None);
    if let WorkItem::Risk(e) = &mut item {
        e.risk_level = level;
        e.source_id = format!("alert-{id}");
    }
    item
}

/// 9a. A closed case is reopened by an escalation only while it is its user's current case:
///     here a merge raised closed case 1 (as one racing with a new episode's signal would) while
///     case 2 of a newer episode runs; working case 1 leaves it closed and changes nothing.
#[tokio::test]
async fn a_closed_case_is_not_reopened_beside_a_newer_case_of_its_user() {
    use risk_responder::cases::CaseStatus;
    let s = start().await;
    seed(&s, "medium", "atRisk", 2);
    let ledger = memory_ledger();
    let mut worker = enforcing_worker(&s, ledger.clone(), 1);
    // Every signal looks at Identity Protection afresh (the view serves no older answer).
    worker.view_max_age = time::Duration::ZERO;
    worker
        .handle(&signal_at("sig-first", RiskLevel::Medium))
        .await;
    let (first, _) = ledger.find_case("sig-first").await.unwrap().unwrap();
    assert_eq!(first.status, CaseStatus::Completed, "{first:#?}");
    // A new detection: Identity Protection reports Adele at high risk again; case 2 opens and
    // waits on a Graph outage.
    let later = time::OffsetDateTime::now_utc() + time::Duration::seconds(5);
    s.with(|d| {
        let record = d.risky_users.get_mut(ADELE).unwrap();
        record["riskLevel"] = "high".into();
        record["riskState"] = "atRisk".into();
        record["riskLastUpdatedDateTime"] = later
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
            .into();
        d.faults.unavailable_paths.push((
            reqwest::Method::POST,
            format!("/users/{ADELE}/revokeSignInSessions"),
        ));
    });
    worker
        .handle(&signal_at("sig-second", RiskLevel::High))
        .await;
    let (second, _) = ledger.find_case("sig-second").await.unwrap().unwrap();
    assert_ne!(second.case_id, first.case_id, "{second:#?}");
    assert_eq!(second.status, CaseStatus::Retry);
    // The racing merge's outcome: case 1 raised to High after case 2 was placed.
    let (mut raised, version) = ledger.case(&first.case_id).await.unwrap().unwrap();
    raised.risk_level = RiskLevel::High;
    ledger.save_case(&raised, version).await.unwrap().unwrap();
    let writes = s.writes().len();
    worker
        .handle(&WorkItem::Resume {
            tenant_id: TENANT.into(),
            case_id: first.case_id.clone(),
        })
        .await;
    let (first, _) = ledger.case(&first.case_id).await.unwrap().unwrap();
    assert_eq!(first.status, CaseStatus::Completed, "{first:#?}");
    assert!(!first.needs_escalation());
    assert!(
        first.history.iter().any(|h| h
            .what
            .contains(&format!("not escalated: a newer case {}", second.case_id))),
        "{:#?}",
        first.history
    );
    assert_eq!(s.writes().len(), writes, "{:?}", s.writes());
}

/// 9b. Protection holds those eligible through PIM for Groups: Adele may activate membership
///     of a role-assignable group that holds Global Administrator at any time.
#[tokio::test]
async fn an_eligible_member_of_a_group_holding_a_protected_role_is_protected() {
    use risk_responder::cases::CaseStatus;
    const GLOBAL_ADMIN: &str = "62e90394-69f5-4237-9190-012177145e10";
    const ADMINS: &str = "7a0e2f5a-3333-4c8d-9000-00000000dddd";
    let s = start().await;
    seed(&s, "high", "atRisk", 2);
    s.with(|d| {
        d.groups.push(ADMINS.into());
        d.role_assignments
            .push((ADMINS.into(), GLOBAL_ADMIN.into()));
        d.group_eligibilities
            .push((ADMINS.into(), ADELE.into(), "member".into()));
    });
    let ledger = memory_ledger();
    enforcing_worker(&s, ledger.clone(), 2)
        .handle(&sentinel_signal("sig-pim-groups", None))
        .await;
    let (case, _) = ledger.find_case("sig-pim-groups").await.unwrap().unwrap();
    assert_eq!(case.status, CaseStatus::AwaitingApproval, "{case:#?}");
    assert!(
        case.rails
            .iter()
            .any(|r| r.contains("eligible through PIM for Groups") && r.contains(ADMINS)),
        "{:?}",
        case.rails
    );
    assert_eq!((resets(&s), revokes(&s)), (0, 0));
    let calls: Vec<String> = s.with(|d| d.calls.iter().map(|(c, _)| c.clone()).collect());
    assert!(
        calls.iter().any(|c| c.starts_with(
            "GET /v1.0/identityGovernance/privilegedAccess/group/eligibilitySchedules?$filter=groupId"
        )),
        "{calls:?}"
    );
}

/// 9c. Only failed runs count towards the local retries' limit: a case that failed seven
///     times, then completed, then failed once more on an escalation is retried again, not
///     handed to a person as "gave up after 9 attempts".
#[tokio::test]
async fn only_failed_runs_count_towards_the_local_retries_limit() {
    use risk_responder::cases::CaseStatus;
    use risk_responder::respond::pending::pending_work;
    let s = start().await;
    seed(&s, "medium", "atRisk", 2);
    let ledger = memory_ledger().with_work_index();
    let worker = enforcing_worker(&s, ledger.clone(), 1);
    let revoke_down = || {
        s.with(|d| {
            d.faults.unavailable_paths.push((
                reqwest::Method::POST,
                format!("/users/{ADELE}/revokeSignInSessions"),
            ))
        })
    };
    revoke_down();
    let item = signal_at("sig-flaky", RiskLevel::Medium);
    for _ in 0..7 {
        worker.handle(&item).await;
    }
    let (case, _) = ledger.find_case("sig-flaky").await.unwrap().unwrap();
    assert_eq!((case.status, case.attempts), (CaseStatus::Retry, 7));
    s.with(|d| d.faults.unavailable_paths.clear());
    worker.handle(&item).await;
    let (case, _) = ledger.find_case("sig-flaky").await.unwrap().unwrap();
    assert_eq!((case.status, case.attempts), (CaseStatus::Completed, 0));
    // A high alert escalates the case; blocking sign-in fails for now.
    s.with(|d| {
        d.faults
            .unavailable_paths
            .push((reqwest::Method::PATCH, format!("/users/{ADELE}")))
    });
    worker.handle(&signal_at("sig-high", RiskLevel::High)).await;
    let (case, _) = ledger.find_case("sig-flaky").await.unwrap().unwrap();
    assert_eq!(
        (case.status, case.attempts),
        (CaseStatus::Retry, 1),
        "{case:#?}"
    );
    let later = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let due = pending_work(&ledger, later, 100).await.unwrap();
    assert!(
        due.iter()
            .any(|w| matches!(w, WorkItem::Resume { case_id, .. } if *case_id == case.case_id)),
        "{due:?}"
    );
    let (case, _) = ledger.find_case("sig-flaky").await.unwrap().unwrap();
    assert_eq!(
        case.status,
        CaseStatus::Retry,
        "not given up: {:?}",
        case.last_error
    );
}
