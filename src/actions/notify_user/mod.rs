//! Tell the user (`notify_user`) what happened and what to do, from the operator's templates
//! ([`templates`]): at their mailbox, or, when the plan blocks sign-in or confirms the
//! compromise (the mailbox is the thing at risk), at their manager's or a configured address.
//! Never a password.

pub mod templates;

use std::collections::HashMap;

use async_trait::async_trait;

use super::password::SELF_SERVICE_REASON;
use super::{Context, Failure, Job, Ran, Remediation, Step, mail_item, operator};
use crate::cases::Case;
use crate::cases::case::ActionState;
use crate::cases::policy::{Action, PasswordDelivery};
use crate::graph::batch::MAIL_BATCH_MAX;
use templates::UserMail;

/// The module of `notify_user`.
pub struct NotifyUser;

#[async_trait]
impl Remediation for NotifyUser {
    fn label(&self, _: Action) -> &'static str {
        "tell the user what happened and what to do"
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
        let picked: Vec<usize> = items.iter().map(|&(j, _)| j).collect();
        self.notify_users(ctx, tenant, jobs, &picked).await.into()
    }
}

impl NotifyUser {
    /// Tells each user what happened and what to do, from the operator's templates: at their
    /// mailbox, or (when the plan blocks sign-in or confirms the compromise, so the mailbox is
    /// the thing at risk) at the manager's or the configured address. Never a password.
    async fn notify_users(
        &self,
        ctx: &Context<'_>,
        tenant: &str,
        jobs: &[Job],
        picked: &[usize],
    ) -> Vec<Result<Step, Failure>> {
        let Some(config) = &ctx.policy.notify_user else {
            return picked
                .iter()
                .map(|_| Err(operator("[notify_user] is not configured")))
                .collect();
        };
        let mut results: Vec<Option<Result<Step, Failure>>> = vec![None; picked.len()];
        let at_risk_mailbox = |case: &Case| {
            case.actions.iter().any(|a| {
                matches!(a.action, Action::BlockSignIn | Action::ConfirmCompromised)
                    && !matches!(a.state, ActionState::Skipped { .. })
            })
        };
        // Managers, for those whose own mailbox is at risk.
        let need_manager: Vec<usize> = (0..picked.len())
            .filter(|&k| {
                at_risk_mailbox(&jobs[picked[k]].case) && config.when_mailbox_at_risk == "manager"
            })
            .collect();
        let of_jobs: Vec<usize> = need_manager.iter().map(|&k| picked[k]).collect();
        let mut managers: HashMap<usize, Option<String>> = HashMap::new();
        for (k, answer) in need_manager
            .into_iter()
            .zip(ctx.manager_mails(tenant, jobs, &of_jobs).await)
        {
            match answer {
                Ok(mail) => {
                    managers.insert(k, mail);
                }
                Err(e) => results[k] = Some(Err(Failure::from(e))),
            }
        }
        let delivered_by = match &ctx.policy.password_delivery {
            Some(PasswordDelivery::Mail {
                to_manager: true, ..
            }) => "your manager or the helpdesk",
            _ => "the helpdesk",
        };
        let mut mails = Vec::new();
        let mut slots = Vec::new();
        for (k, &j) in picked.iter().enumerate() {
            if results[k].is_some() {
                continue;
            }
            let job = &jobs[j];
            let case = &job.case;
            let upn = case
                .user_principal_name
                .clone()
                .or_else(|| job.facts.user_principal_name.clone())
                .unwrap_or_else(|| case.user_id.clone());
            let recipient = if at_risk_mailbox(case) {
                if config.when_mailbox_at_risk == "manager" {
                    managers
                        .get(&k)
                        .cloned()
                        .flatten()
                        .or_else(|| config.when_no_manager.clone())
                } else {
                    Some(config.when_mailbox_at_risk.clone())
                }
            } else {
                job.facts.mail.clone().or_else(|| Some(upn.clone()))
            };
            let Some(recipient) = recipient else {
                results[k] = Some(Ok(Step::Skipped(
                    "the user's mailbox is at risk, they have no manager to tell and \
                     [notify_user] when_no_manager is not set"
                        .into(),
                )));
                continue;
            };
            let done = |a: Action| {
                case.actions
                    .iter()
                    .any(|x| x.action == a && matches!(x.state, ActionState::Done { .. }))
            };
            let self_service = case.actions.iter().any(|a| {
                a.action == Action::ResetPassword
                    && matches!(&a.state, ActionState::Skipped { reason, .. } if reason == SELF_SERVICE_REASON)
            });
            let kind = if done(Action::ResetPassword) {
                UserMail::Reset
            } else if self_service {
                UserMail::SelfService
            } else if done(Action::BlockSignIn) {
                UserMail::Blocked
            } else {
                UserMail::Advisory
            };
            let what: Vec<&str> = case
                .actions
                .iter()
                .filter(|a| matches!(a.state, ActionState::Done { .. }))
                .map(|a| a.action.as_str())
                .collect();
            let what = if what.is_empty() {
                "no change was needed".to_owned()
            } else {
                format!("done: {}", what.join(", "))
            };
            let display = job
                .facts
                .display_name
                .clone()
                .unwrap_or_else(|| upn.clone());
            let (subject, text) = ctx.templates.render(
                kind,
                &[
                    ("user", upn.as_str()),
                    ("display_name", display.as_str()),
                    ("case_id", case.case_id.as_str()),
                    ("sspr_url", config.sspr_url.as_str()),
                    ("helpdesk", config.helpdesk.as_str()),
                    ("delivered_by", delivered_by),
                    ("what_happened", what.as_str()),
                ],
            );
            mails.push(mail_item(&config.sender, &[recipient], &subject, &text));
            slots.push((k, kind));
        }
        let answers = ctx.graph.batch_sized(tenant, &mails, MAIL_BATCH_MAX).await;
        for ((k, kind), answer) in slots.into_iter().zip(answers) {
            results[k] = Some(
                answer
                    .map(|_| {
                        Step::Done(Some(format!(
                            "{} mail sent",
                            kind.file().trim_end_matches(".txt")
                        )))
                    })
                    .map_err(Failure::from),
            );
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Ok(Step::Skipped("not attempted".into()))))
            .collect()
    }
}
