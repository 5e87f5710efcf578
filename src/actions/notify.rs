//! Tell the SOC (`notify`): one mail per case, or, when several cases of a tenant have their
//! `notify` in the same round and the policy says `digest`, one digest listing them all (split
//! at [`DIGEST_MAX_CASES`] cases and [`DIGEST_MAX_BYTES`]). No password, ever.
//!
//! Nothing a mail covers is mailed twice, though a worker may stop anywhere: each case is stored
//! naming its mail before the mail is sent, and once Graph accepts the mail one ledger write
//! records it, however many cases it covers (see [`Notify::notify`]).

use std::collections::HashMap;
use std::fmt::Write;

use async_trait::async_trait;

use super::words::{action_detail, findings_and_plan, who};
use super::{Context, Failure, Job, Ran, Remediation, Step, finish, mail_item, operator};
use crate::cases::Case;
use crate::cases::case::ActionState;
use crate::cases::policy::Action;
use crate::graph::batch::MAIL_BATCH_MAX;
use crate::ledger::SocMailRecord;

/// The module of `notify`.
pub struct Notify;

#[async_trait]
impl Remediation for Notify {
    fn label(&self, _: Action) -> &'static str {
        "tell the SOC"
    }

    async fn run(
        &self,
        ctx: &Context<'_>,
        _: Action,
        tenant: &str,
        jobs: &mut [Job],
        items: &[(usize, usize)],
        _: &HashMap<usize, usize>,
    ) -> Ran {
        self.notify(ctx, tenant, jobs, items).await.into()
    }
}

impl Notify {
    /// The SOC mail: one per case, or, when the policy says `digest` and several cases of the
    /// tenant have their `notify` in this round, one digest listing them all (split at
    /// [`DIGEST_MAX_CASES`] cases and [`DIGEST_MAX_BYTES`]); mails go four to a
    /// `$batch` (Outlook's per-mailbox concurrency). Every case in a mail records that mail's
    /// outcome: all done, referencing it, or all failed and retried.
    ///
    /// Nothing a mail covers is mailed twice, though a worker may stop anywhere: each case is
    /// stored naming its mail before the mail is sent (`checkpoints`; a case whose lease ran
    /// out meanwhile is another worker's and is left out), and once Graph accepts the mail one
    /// ledger write records it, however many cases it covers. A worker that resumes a case
    /// naming a mail asks the ledger first: recorded means sent, and the case is done without
    /// another mail. What is left is the instant between Graph's answer and that one write:
    /// a worker stopped there sends the mail again on resume (never a case without its mail).
    async fn notify(
        &self,
        ctx: &Context<'_>,
        tenant: &str,
        jobs: &mut [Job],
        items: &[(usize, usize)],
    ) -> Vec<Result<Step, Failure>> {
        let Some(config) = &ctx.policy.notify else {
            return items
                .iter()
                .map(|_| Err(operator("[notify] is not configured")))
                .collect();
        };
        let mut results: Vec<Option<Result<Step, Failure>>> = vec![None; items.len()];
        // 1. Mails named before (a worker stopped around their send): sent, if recorded.
        let named: Vec<String> = items
            .iter()
            .filter_map(|&(j, i)| jobs[j].case.actions[i].mail_id.clone())
            .collect();
        if !named.is_empty() {
            match ctx.ledger.soc_mails_sent(tenant, &named).await {
                Ok(sent) => {
                    for (k, &(j, i)) in items.iter().enumerate() {
                        let case = &jobs[j].case;
                        let Some(id) = &case.actions[i].mail_id else {
                            continue;
                        };
                        if let Some(record) = sent
                            .iter()
                            .find(|r| &r.mail_id == id && r.case_ids.contains(&case.case_id))
                        {
                            results[k] = Some(Ok(Step::Done(Some(format!(
                                "in SOC mail {id} of {} case(s), sent at {} (recorded here by the \
                                 worker that resumed the case)",
                                record.case_ids.len(),
                                record.sent_at
                            )))));
                        }
                    }
                }
                Err(e) => {
                    // Whether it went out is unknown: wait rather than risk a second mail.
                    for (k, &(j, i)) in items.iter().enumerate() {
                        if let Some(id) = &jobs[j].case.actions[i].mail_id {
                            results[k] = Some(Err(Failure {
                                error: format!(
                                    "whether SOC mail {id} was sent cannot be read: {e}"
                                ),
                                transient: true,
                                needs_operator: false,
                            }));
                        }
                    }
                }
            }
        }
        // 2. The others: a mail each, or digests.
        let todo: Vec<usize> = (0..items.len()).filter(|&k| results[k].is_none()).collect();
        let groups: Vec<Vec<usize>> = if config.digest && todo.len() > 1 {
            let sizes: Vec<usize> = todo
                .iter()
                .map(|&k| digest_section(&jobs[items[k].0].case).len())
                .collect();
            pack_digests(&sizes, DIGEST_MAX_CASES, DIGEST_MAX_BYTES)
                .into_iter()
                .map(|mail| mail.into_iter().map(|x| todo[x]).collect())
                .collect()
        } else {
            todo.iter().map(|&k| vec![k]).collect()
        };
        if groups.is_empty() {
            return finish(results);
        }
        // 3. Each case stored naming its mail before anything is sent.
        let mail_ids: Vec<String> = groups
            .iter()
            .map(|_| format!("soc-{}", uuid::Uuid::new_v4().simple()))
            .collect();
        let mut which = Vec::new();
        for (group, id) in groups.iter().zip(&mail_ids) {
            for &k in group {
                let (j, i) = items[k];
                jobs[j].case.actions[i].mail_id = Some(id.clone());
                which.push(j);
            }
        }
        ctx.checkpoints.record(jobs, &which).await;
        for &k in groups.iter().flatten() {
            let (j, i) = items[k];
            if jobs[j].stopped {
                // Another worker holds the case now: it is left as this worker last stored it.
                if let Some(stored) = jobs[j].base.actions.get(i).cloned() {
                    jobs[j].case.actions[i] = stored;
                }
                results[k] = Some(Ok(Step::Untouched));
            }
        }
        // 4. The mails; one ledger write for each Graph accepted; then the cases' outcomes.
        let parts = groups.iter().filter(|g| g.len() > 1).count();
        let mut mails = Vec::new();
        let mut sent: Vec<(usize, Vec<usize>)> = Vec::new();
        let mut part = 0;
        for (g, group) in groups.iter().enumerate() {
            let members: Vec<usize> = group
                .iter()
                .copied()
                .filter(|&k| results[k].is_none())
                .collect();
            let (subject, text) = match members.as_slice() {
                [] => continue,
                [one] => soc_mail(&jobs[items[*one].0].case),
                _ => {
                    part += 1;
                    let cases: Vec<&Case> =
                        members.iter().map(|&k| &jobs[items[k].0].case).collect();
                    let sections: Vec<String> = cases.iter().map(|c| digest_section(c)).collect();
                    soc_digest(
                        tenant,
                        &mail_ids[g],
                        &cases,
                        &sections,
                        (parts > 1).then_some((part, parts)),
                    )
                }
            };
            mails.push(mail_item(&config.sender, &config.to, &subject, &text));
            sent.push((g, members));
        }
        let answers = ctx.graph.batch_sized(tenant, &mails, MAIL_BATCH_MAX).await;
        let now = ctx.graph.now();
        for ((g, members), answer) in sent.into_iter().zip(answers) {
            let id = &mail_ids[g];
            match answer {
                Ok(_) => {
                    let record = SocMailRecord {
                        mail_id: id.clone(),
                        case_ids: members
                            .iter()
                            .map(|&k| jobs[items[k].0].case.case_id.clone())
                            .collect(),
                        sent_at: now.replace_nanosecond(0).unwrap_or(now),
                    };
                    if let Err(e) = ctx.ledger.record_soc_mail(tenant, &record).await {
                        tracing::warn!(tenant_id = %tenant, mail_id = %id, error = %e, "SOC mail sent but not recorded; the cases record it");
                    }
                    let detail = if members.len() == 1 {
                        format!("mailed to {} recipient(s) (SOC mail {id})", config.to.len())
                    } else {
                        format!(
                            "in SOC digest {id} of {} cases, mailed to {} recipient(s)",
                            members.len(),
                            config.to.len()
                        )
                    };
                    for k in members {
                        results[k] = Some(Ok(Step::Done(Some(detail.clone()))));
                    }
                }
                Err(e) => {
                    for k in members {
                        results[k] = Some(Err(Failure::from(e.clone())));
                    }
                }
            }
        }
        finish(results)
    }
}

/// The SOC's mail about a case: subject and plain-text body. No password, ever.
pub fn soc_mail(case: &Case) -> (String, String) {
    let subject = format!(
        "risk-responder: {} ({:?} risk) case {} {}",
        who(case),
        case.risk_level,
        case.case_id,
        case.status.as_str()
    );
    let mut text = String::new();
    let _ = writeln!(
        text,
        "Case {} for {} (tenant {}).",
        case.case_id,
        who(case),
        case.tenant_id
    );
    let _ = writeln!(
        text,
        "Risk level {:?}; mode {:?}; {} signal(s) merged, opened by {}.",
        case.risk_level,
        case.mode,
        case.signals.count,
        case.opened_by.as_str()
    );
    findings_and_plan(&mut text, case, "", usize::MAX);
    let _ = writeln!(text, "Actions:");
    for action in &case.actions {
        let detail = action_detail(&action.state);
        let _ = writeln!(
            text,
            "  {} - {} {}",
            super::label(action.action),
            action.state.word(),
            detail
        );
    }
    if !case.rails.is_empty() {
        let _ = writeln!(text, "Safety rails: {}.", case.rails.join("; "));
    }
    let _ = writeln!(text, "Next: {}.", case.next_actor());
    (subject, text)
}

/// Most cases in one SOC digest mail.
pub const DIGEST_MAX_CASES: usize = 100;
/// Most text in one SOC digest mail. Graph refuses a request over 4 MB, and mails go four to a
/// `$batch`: four digests at this bound stay near 1 MB.
pub const DIGEST_MAX_BYTES: usize = 256 * 1024;
/// Blocked sign-ins shown per case in a digest (the count covers them all).
const DIGEST_SIGN_INS: usize = 3;

/// One case's section of a SOC digest: the case, the user and the level; what was done or is
/// planned; the short 53011 summary (count and the newest three); rails; who must act next once
/// this mail is sent. No password, ever.
pub fn digest_section(case: &Case) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "Case {}: {} ({:?} risk; mode {:?}; {} signal(s), opened by {}).",
        case.case_id,
        who(case),
        case.risk_level,
        case.mode,
        case.signals.count,
        case.opened_by.as_str()
    );
    findings_and_plan(&mut text, case, "  ", DIGEST_SIGN_INS);
    let _ = writeln!(text, "  Actions:");
    let now = time::OffsetDateTime::now_utc();
    let mut projected = case.clone();
    for action in &mut projected.actions {
        let this_mail = action.action == crate::cases::Action::Notify && action.state.runnable();
        let detail = if this_mail {
            "this digest".to_owned()
        } else {
            action_detail(&action.state)
        };
        let word = if this_mail {
            "sending"
        } else {
            action.state.word()
        };
        let _ = writeln!(text, "    {} - {} {}", action.action.as_str(), word, detail);
        if this_mail {
            action.state = ActionState::Done {
                at: now,
                detail: None,
            };
        }
    }
    if !case.rails.is_empty() {
        let _ = writeln!(text, "  Safety rails: {}.", case.rails.join("; "));
    }
    // Who acts once this mail is out (the case as it settles without anything else failing).
    if projected.findings.is_some() {
        projected.settle(now);
    }
    let _ = writeln!(text, "  Next: {}.", projected.next_actor());
    text
}

/// Splits digest sections into mails: in order, at most [`DIGEST_MAX_CASES`] sections and
/// [`DIGEST_MAX_BYTES`] of text a mail (a section larger than that goes alone). Returns each
/// mail's section indices.
pub fn pack_digests(sizes: &[usize], max_cases: usize, max_bytes: usize) -> Vec<Vec<usize>> {
    let mut mails: Vec<Vec<usize>> = Vec::new();
    let mut bytes = 0;
    for (i, &size) in sizes.iter().enumerate() {
        let fits = mails
            .last()
            .is_some_and(|m| m.len() < max_cases && bytes + size <= max_bytes);
        if fits {
            bytes += size;
            if let Some(last) = mails.last_mut() {
                last.push(i);
            }
        } else {
            mails.push(vec![i]);
            bytes = size;
        }
    }
    mails
}

/// The SOC digest of several cases of one tenant: subject and plain-text body, one section per
/// case ([`digest_section`]); `part` is (this mail, of how many) when the round's cases took
/// more than one mail. No password, ever.
pub fn soc_digest(
    tenant: &str,
    mail_id: &str,
    cases: &[&Case],
    sections: &[String],
    part: Option<(usize, usize)>,
) -> (String, String) {
    let mut levels: Vec<(crate::event::RiskLevel, usize)> = Vec::new();
    for case in cases {
        match levels.iter_mut().find(|(l, _)| *l == case.risk_level) {
            Some((_, n)) => *n += 1,
            None => levels.push((case.risk_level, 1)),
        }
    }
    levels.sort_by_key(|(level, _)| std::cmp::Reverse(*level));
    let levels: Vec<String> = levels
        .iter()
        .map(|(l, n)| format!("{n} {}", format!("{l:?}").to_ascii_lowercase()))
        .collect();
    let part_text = part
        .map(|(i, n)| format!(" (part {i} of {n})"))
        .unwrap_or_default();
    let subject = format!(
        "risk-responder: {} cases in tenant {tenant} ({}){part_text}",
        cases.len(),
        levels.join(", ")
    );
    let waiting = sections
        .iter()
        .filter(|s| s.contains("  Next: person:"))
        .count();
    let mut text = format!(
        "SOC digest {mail_id}{part_text}: {} case(s) of tenant {tenant} worked in one round; {waiting}          wait for a person. One section per case.\n\n",
        cases.len()
    );
    for section in sections {
        text.push_str(section);
        text.push('\n');
    }
    (subject, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_split_at_the_case_and_size_bounds() {
        let sizes = vec![1_000; 250];
        let mails = pack_digests(&sizes, DIGEST_MAX_CASES, DIGEST_MAX_BYTES);
        assert_eq!(
            mails.iter().map(Vec::len).collect::<Vec<_>>(),
            [100, 100, 50]
        );
        let flat: Vec<usize> = mails.concat();
        assert_eq!(
            flat,
            (0..250).collect::<Vec<_>>(),
            "every case once, in order"
        );
        // By size: 100 KiB sections, two to a 256 KiB mail; an oversized one alone.
        let sizes = [100 * 1024, 100 * 1024, 100 * 1024, 300 * 1024, 10];
        assert_eq!(
            pack_digests(&sizes, DIGEST_MAX_CASES, DIGEST_MAX_BYTES),
            [vec![0, 1], vec![2], vec![3], vec![4]]
        );
        assert!(pack_digests(&[], 100, 100).is_empty());
    }
}
