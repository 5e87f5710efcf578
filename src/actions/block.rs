//! Block or allow the user's sign-in (`PATCH /users/{id}` with `accountEnabled`). Each checks
//! its own precondition (no block of a blocked account, no unblock of an enabled one); a block
//! due with the password reset goes in the reset's `PATCH` (see [`super::password`]).

use std::collections::HashMap;

use async_trait::async_trait;
use reqwest::Method;
use serde_json::json;

use super::{Context, Job, Ran, Remediation, Step};
use crate::cases::policy::Action;
use crate::graph::api::segment;
use crate::graph::batch::BatchItem;

/// The module of `block_sign_in` and `unblock_sign_in`.
pub struct Block;

#[async_trait]
impl Remediation for Block {
    fn label(&self, action: Action) -> &'static str {
        match action {
            Action::UnblockSignIn => "allow the user to sign in again",
            _ => "block the user's sign-in",
        }
    }

    fn already_done(&self, action: Action, job: &Job) -> Option<String> {
        let enable = action == Action::UnblockSignIn;
        (job.facts.account_enabled == Some(enable)).then(|| {
            format!(
                "sign-in found {} by the worker that stopped before recording it",
                if enable { "allowed" } else { "blocked" }
            )
        })
    }

    async fn run(
        &self,
        ctx: &Context<'_>,
        action: Action,
        tenant: &str,
        jobs: &mut [Job],
        items: &[(usize, usize)],
        _: &HashMap<usize, usize>,
    ) -> Ran {
        let picked: Vec<usize> = items.iter().map(|&(j, _)| j).collect();
        let enable = action == Action::UnblockSignIn;
        let results = ctx
            .per_user(tenant, jobs, &picked, |job| {
                if job.facts.account_enabled == Some(enable) {
                    return Err(if enable {
                        "sign-in is already allowed"
                    } else {
                        "sign-in is already blocked"
                    });
                }
                Ok(BatchItem::new(
                    Method::PATCH,
                    format!("/users/{}", segment(&job.case.user_id)),
                    Some(json!({ "accountEnabled": enable })),
                ))
            })
            .await;
        for (&j, result) in picked.iter().zip(&results) {
            if matches!(result, Ok(Step::Done(_))) {
                jobs[j].facts.account_enabled = Some(enable);
            }
        }
        results.into()
    }
}
