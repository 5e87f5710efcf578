//! One SOC mail per tenant round: the `notify` of several cases worked in one round goes as one
//! digest listing every case; a failed digest leaves every case to retry; a worker that stops
//! before or after the digest went out leaves exactly one mail per case, counting digests.

mod common;
mod graph_standin;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use graph_standin::*;
use risk_responder::cases::case::ActionState;
use risk_responder::cases::{Action, Case, CaseStatus, Mode, Policy};
use risk_responder::event::{EventSource, RiskEvent, RiskLevel, Subject};
use risk_responder::ledger::{Ledger, Store};
use risk_responder::queue::WorkItem;
use serde_json::json;

const CASES: usize = 5;

fn user(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

fn upn(i: usize) -> String {
    format!("user{i}@contoso.onmicrosoft.com")
}

/// `CASES` users at high risk with two 53011 sign-ins each, all with the same manager.
fn seed_many(s: &StandIn) {
    seed_n(s, CASES);
}

/// `n` users at high risk with two 53011 sign-ins each, all with the same manager.
fn seed_n(s: &StandIn, n: usize) {
    let now = time::OffsetDateTime::now_utc();
    let iso = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    s.with(|d| {
        d.users.push(json!({"id": MANAGER, "userPrincipalName": "miriam.graham@contoso.onmicrosoft.com",
            "mail": "miriam.graham@contoso.onmicrosoft.com", "accountEnabled": true}));
        for i in 0..n {
            let (id, upn) = (user(i), upn(i));
            d.users.push(json!({"id": id, "userPrincipalName": upn, "mail": upn, "accountEnabled": true}));
            d.managers.insert(id.clone(), MANAGER.into());
            d.risky_users.insert(id.clone(), json!({"id": id, "userPrincipalName": upn,
                "riskLevel": "high", "riskState": "atRisk", "riskDetail": "none",
                "riskLastUpdatedDateTime": iso(now - time::Duration::minutes(3))}));
            for k in 0..2 {
                d.sign_ins.push(json!({"id": format!("si-{i}-{k}"),
                    "createdDateTime": iso(now - time::Duration::minutes(2 + k)),
                    "userId": id, "userPrincipalName": upn,
                    "appDisplayName": "Office 365 Exchange Online", "ipAddress": format!("203.0.113.{}", 10 + i),
                    "clientAppUsed": "Browser",
                    "location": {"city": "Lagos", "state": "Lagos", "countryOrRegion": "NG"},
                    "status": {"errorCode": 53011, "failureReason": "User blocked due to risk on home tenant."}}));
            }
        }
    });
}

fn alert(i: usize) -> WorkItem {
    WorkItem::Risk(RiskEvent {
        event_id: format!("spray-{i}"),
        tenant_id: TENANT.into(),
        source: EventSource::Sentinel,
        subject: Subject::User {
            id: Some(user(i)),
            upn: None,
        },
        risk_level: RiskLevel::High,
        detected_at: time::OffsetDateTime::now_utc(),
        source_id: format!("alert-{i}"),
        resource_data: None,
        origin: None,
    })
}

fn alerts() -> Vec<WorkItem> {
    (0..CASES).map(alert).collect()
}

/// SOC mails sent (digests and single-case mails), as (subject, body).
fn soc_mails(s: &StandIn) -> Vec<(String, String)> {
    s.with(|d| {
        d.mails
            .iter()
            .map(|(_, m)| {
                (
                    m["message"]["subject"].as_str().unwrap_or("").to_owned(),
                    m["message"]["body"]["content"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                )
            })
            .filter(|(subject, _)| subject.starts_with("risk-responder:"))
            .collect()
    })
}

/// The temporary passwords the directory holds now.
fn passwords(s: &StandIn) -> Vec<String> {
    s.with(|d| {
        d.users
            .iter()
            .filter_map(|u| u["passwordProfile"]["password"].as_str().map(str::to_owned))
            .collect()
    })
}

async fn cases(ledger: &Ledger) -> Vec<Case> {
    let mut cases = Vec::new();
    for i in 0..CASES {
        cases.push(
            ledger
                .find_case(&format!("spray-{i}"))
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("no case for spray-{i}"))
                .0,
        );
    }
    cases
}

fn notify_of(case: &Case) -> &risk_responder::cases::case::CaseAction {
    case.actions
        .iter()
        .find(|a| a.action == Action::Notify)
        .expect("the plan notifies the SOC")
}

fn enforcing() -> Policy {
    policy(Mode::Enforce)
}

/// Every case is in exactly one SOC mail that went out, counting digests.
fn assert_one_mail_per_case(s: &StandIn, cases: &[Case]) {
    let mails = soc_mails(s);
    for case in cases {
        let holding = mails
            .iter()
            .filter(|(subject, body)| {
                subject.contains(&case.case_id) || body.contains(&format!("Case {}:", case.case_id))
            })
            .count();
        assert_eq!(holding, 1, "case {} in {holding} SOC mails", case.case_id);
    }
}

#[tokio::test]
async fn the_cases_of_a_round_get_one_digest_holding_them_all() {
    let s = start().await;
    seed_many(&s);
    let ledger = memory_ledger();
    let worker = worker_with(&s, ledger.clone(), enforcing(), 2);
    let dispositions = worker.handle_batch(&alerts()).await;
    assert!(
        dispositions.iter().all(|d| !d.is_retry()),
        "{dispositions:?}"
    );
    let mails = soc_mails(&s);
    assert_eq!(mails.len(), 1, "one digest: {mails:#?}");
    let (subject, body) = &mails[0];
    assert_eq!(
        subject,
        &format!("risk-responder: {CASES} cases in tenant {TENANT} ({CASES} high)")
    );
    let cases = cases(&ledger).await;
    let mail_id = notify_of(&cases[0])
        .mail_id
        .clone()
        .expect("the digest's id");
    assert!(
        body.starts_with(&format!("SOC digest {mail_id}: {CASES} case(s)")),
        "{body}"
    );
    for (i, case) in cases.iter().enumerate() {
        assert_eq!(case.status, CaseStatus::Completed, "{case:#?}");
        let section = body
            .split(&format!("Case {}: ", case.case_id))
            .nth(1)
            .unwrap_or_else(|| panic!("case {} not in the digest:\n{body}", case.case_id));
        let section = section.split("\nCase ").next().unwrap();
        assert!(
            section.starts_with(&format!("{} (High risk", upn(i))),
            "{section}"
        );
        assert!(
            section.contains("Sign-ins blocked with AADSTS53011 since")
                && section.contains(": 2.")
                && section.contains(&format!("IP 203.0.113.{}", 10 + i)),
            "{section}"
        );
        assert!(section.contains("revoke_sessions - done"), "{section}");
        assert!(
            section.contains("block_sign_in - done in one request with the password reset"),
            "{section}"
        );
        assert!(
            section.contains("reset_password - done temporary password set"),
            "{section}"
        );
        assert!(section.contains("confirm_compromised - done"), "{section}");
        assert!(
            section.contains("notify - sending this digest"),
            "{section}"
        );
        assert!(section.contains("Next: nobody"), "{section}");
        let notify = notify_of(case);
        assert_eq!(notify.mail_id.as_deref(), Some(mail_id.as_str()));
        match &notify.state {
            ActionState::Done { detail, .. } => assert_eq!(
                detail.as_deref(),
                Some(
                    format!("in SOC digest {mail_id} of {CASES} cases, mailed to 1 recipient(s)")
                        .as_str()
                )
            ),
            other => panic!("{other:?}"),
        }
    }
    for password in passwords(&s) {
        assert!(!body.contains(&password), "a password in the digest");
    }
    assert_eq!(passwords(&s).len(), CASES);
    // One ledger record for the digest, naming every case.
    let sent = ledger
        .soc_mails_sent(TENANT, std::slice::from_ref(&mail_id))
        .await
        .unwrap();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].case_ids.len(), CASES);
    // The password mails are still one per user.
    let password_mails = password_mail_bodies(&s).len();
    assert_eq!(password_mails, CASES);
}

#[tokio::test]
async fn without_the_digest_each_case_has_its_own_mail() {
    let s = start().await;
    seed_many(&s);
    let ledger = memory_ledger();
    let mut policy = enforcing();
    if let Some(notify) = policy.notify.as_mut() {
        notify.digest = false;
    }
    let worker = worker_with(&s, ledger.clone(), policy, 2);
    let dispositions = worker.handle_batch(&alerts()).await;
    assert!(
        dispositions.iter().all(|d| !d.is_retry()),
        "{dispositions:?}"
    );
    let mails = soc_mails(&s);
    assert_eq!(mails.len(), CASES);
    assert!(
        mails
            .iter()
            .all(|(subject, _)| subject.contains("(High risk) case ")),
        "{mails:#?}"
    );
    assert_one_mail_per_case(&s, &cases(&ledger).await);
}

#[tokio::test]
async fn a_failed_digest_leaves_every_case_to_retry_then_one_mail_per_case() {
    let s = start().await;
    seed_many(&s);
    let ledger = memory_ledger();
    let worker = worker_with(&s, ledger.clone(), enforcing(), 2);
    s.with(|d| {
        d.faults
            .unavailable_mail_subjects
            .push("cases in tenant".into())
    });
    let dispositions = worker.handle_batch(&alerts()).await;
    assert!(
        dispositions.iter().all(|d| d.is_retry()),
        "{dispositions:?}"
    );
    assert!(soc_mails(&s).is_empty());
    for case in cases(&ledger).await {
        assert_eq!(case.status, CaseStatus::Retry);
        assert!(
            matches!(
                notify_of(&case).state,
                ActionState::Failed {
                    transient: true,
                    ..
                }
            ),
            "{:?}",
            notify_of(&case).state
        );
        assert!(matches!(
            case.actions
                .iter()
                .find(|a| a.action == Action::ConfirmCompromised)
                .unwrap()
                .state,
            ActionState::Done { .. }
        ));
    }
    s.with(|d| d.faults.unavailable_mail_subjects.clear());
    let dispositions = worker.handle_batch(&alerts()).await;
    assert!(
        dispositions.iter().all(|d| !d.is_retry()),
        "{dispositions:?}"
    );
    let cases = cases(&ledger).await;
    assert!(cases.iter().all(|c| c.status == CaseStatus::Completed));
    assert_eq!(soc_mails(&s).len(), 1, "one digest, sent by the retry");
    assert_one_mail_per_case(&s, &cases);
    assert_eq!(
        (resets(&s), revokes(&s)),
        (CASES, CASES),
        "nothing else repeated"
    );
}

/// Where a worker stops: just after Graph accepted the digest (its record written, the cases
/// not yet), or just after the first case was stored naming the digest (before it was sent).
#[derive(Clone, Copy, PartialEq, Eq)]
enum StopAt {
    AfterTheDigest,
    BeforeTheDigest,
}

/// Stops the worker forever at `at`.
struct StopsAt {
    at: StopAt,
    sent: AtomicBool,
    stopped: AtomicBool,
}

#[async_trait::async_trait]
impl common::hooked_store::StoreHooks for StopsAt {
    async fn before_put(&self, key: &str, _doc: &str) {
        if self.at == StopAt::AfterTheDigest
            && self.sent.load(Ordering::SeqCst)
            && key.starts_with("case#")
        {
            self.stop().await;
        }
    }
    async fn after_put(&self, key: &str, doc: &str, written: Option<u64>) {
        if key.contains("#socmail#") {
            self.sent.store(true, Ordering::SeqCst);
        }
        if self.at == StopAt::BeforeTheDigest
            && key.starts_with("case#")
            && written.is_some()
            && Self::names_a_mail(doc)
        {
            self.stop().await;
        }
    }
}

impl StopsAt {
    async fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        std::future::pending::<()>().await;
    }

    /// A case naming a SOC mail it has not recorded as done.
    fn names_a_mail(doc: &str) -> bool {
        serde_json::from_str::<Case>(doc).is_ok_and(|case| {
            case.actions.iter().any(|a| {
                a.action == Action::Notify
                    && a.mail_id.is_some()
                    && !matches!(a.state, ActionState::Done { .. })
            })
        })
    }
}

/// A worker stops at `at`; once its leases run out another resumes the cases.
async fn stopped_and_resumed(at: StopAt) -> (StandIn, Vec<Case>) {
    let s = start().await;
    seed_many(&s);
    let inner: Arc<dyn Store> =
        Arc::new(risk_responder::ledger::sqlite::SqliteStore::in_memory().unwrap());
    let stopping = Arc::new(common::hooked_store::HookedStore::new(
        inner.clone(),
        StopsAt {
            at,
            sent: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        },
    ));
    let doomed = worker_with(&s, Ledger::new(stopping.clone()), enforcing(), 2);
    let items = alerts();
    let run = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        doomed.handle_batch(&items),
    )
    .await;
    assert!(run.is_err(), "the worker stopped mid-round");
    assert!(stopping.hooks.stopped.load(Ordering::SeqCst));
    drop(doomed);
    let expected = match at {
        StopAt::AfterTheDigest => 1,
        StopAt::BeforeTheDigest => 0,
    };
    assert_eq!(soc_mails(&s).len(), expected);

    // The stopped worker's leases run out; the messages come back to another worker.
    let ledger = Ledger::new(inner);
    for i in 0..CASES {
        let (mut case, version) = ledger
            .find_case(&format!("spray-{i}"))
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(notify_of(&case).state, ActionState::Pending),
            "{:?}",
            notify_of(&case).state
        );
        if let Some(lease) = case.lease.as_mut() {
            lease.until = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
        }
        ledger.save_case(&case, version).await.unwrap().unwrap();
    }
    let survivor = worker_with(&s, ledger.clone(), enforcing(), 2);
    let dispositions = survivor.handle_batch(&items).await;
    assert!(
        dispositions.iter().all(|d| !d.is_retry()),
        "{dispositions:?}"
    );
    let cases = cases(&ledger).await;
    assert!(cases.iter().all(|c| c.status == CaseStatus::Completed));
    assert_eq!(
        soc_mails(&s).len(),
        1,
        "one digest in all: {:#?}",
        soc_mails(&s)
    );
    assert_one_mail_per_case(&s, &cases);
    assert_eq!(
        (resets(&s), revokes(&s)),
        (CASES, CASES),
        "nothing else repeated"
    );
    (s, cases)
}

/// Stopped after the digest went out (and was recorded), before any case said so: the worker
/// that resumes the cases finds the record and sends nothing.
#[tokio::test]
async fn a_worker_stopped_after_the_digest_went_out_is_not_followed_by_a_second() {
    let (_, cases) = stopped_and_resumed(StopAt::AfterTheDigest).await;
    let mail_id = notify_of(&cases[0]).mail_id.clone().unwrap();
    for case in &cases {
        let notify = notify_of(case);
        assert_eq!(notify.mail_id.as_deref(), Some(mail_id.as_str()));
        match &notify.state {
            ActionState::Done { detail, .. } => {
                let detail = detail.as_deref().unwrap_or("");
                assert!(
                    detail.starts_with(&format!(
                        "in SOC mail {mail_id} of {CASES} case(s), sent at "
                    )) && detail.ends_with("(recorded here by the worker that resumed the case)"),
                    "{detail}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}

/// Stopped with the cases stored naming the digest, before it was sent: nothing went out, so
/// the worker that resumes them sends one.
#[tokio::test]
async fn a_worker_stopped_before_the_digest_went_out_leaves_it_to_the_next() {
    let (_, cases) = stopped_and_resumed(StopAt::BeforeTheDigest).await;
    let mail_id = notify_of(&cases[0]).mail_id.clone().unwrap();
    for case in &cases {
        assert!(matches!(notify_of(case).state, ActionState::Done { .. }));
        assert_eq!(notify_of(case).mail_id.as_deref(), Some(mail_id.as_str()));
    }
}

/// A spray larger than a wave (`remediate::WAVE` cases): every case is contained and mailed,
/// the waves mail their passwords in turn, and each wave has its own confirm request and its
/// own SOC digest; every case is in exactly one SOC mail.
#[tokio::test]
async fn a_spray_larger_than_a_wave_is_remediated_wave_by_wave() {
    use risk_responder::respond::remediate::WAVE;
    let n = WAVE + 5;
    let s = start().await;
    // Listings in pages of Graph's usual size, not the stand-in's default of two.
    s.with(|d| d.page_size = 1000);
    seed_n(&s, n);
    let ledger = memory_ledger();
    let mut policy = enforcing();
    // A spray is what the blast-radius rail holds; here the rail is above it.
    policy.safety.max_enforced_cases_per_hour = 1_000;
    let worker = worker_with(&s, ledger.clone(), policy, 2);
    let items: Vec<WorkItem> = (0..n).map(alert).collect();
    let dispositions = worker.handle_batch(&items).await;
    assert!(
        dispositions.iter().all(|d| !d.is_retry()),
        "{dispositions:?}"
    );
    let mut all = Vec::new();
    for i in 0..n {
        let (case, _) = ledger
            .find_case(&format!("spray-{i}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(case.status, CaseStatus::Completed, "{case:#?}");
        all.push(case);
    }
    assert_eq!(s.with(|d| d.password_resets), n, "one reset per user");
    assert_eq!(passwords(&s).len(), n);
    let confirms = s.with(|d| {
        d.calls
            .iter()
            .filter(|(c, _)| c.contains("confirmCompromised"))
            .count()
    });
    assert_eq!(confirms, 2, "one confirm request per wave");
    assert_eq!(soc_mails(&s).len(), 2, "one digest per wave");
    assert_one_mail_per_case(&s, &all);
}
