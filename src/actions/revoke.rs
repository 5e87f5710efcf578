//! Revoke the user's sign-in sessions (`POST /users/{id}/revokeSignInSessions`): refresh
//! tokens and session cookies stop working, so a stolen session must sign in again. Safe to
//! repeat (the same request leaves the same state).

use std::collections::HashMap;

use async_trait::async_trait;
use reqwest::Method;

use super::{Context, Job, Ran, Remediation};
use crate::cases::policy::Action;
use crate::graph::api::segment;
use crate::graph::batch::BatchItem;

/// The module of `revoke_sessions`.
pub struct Revoke;

#[async_trait]
impl Remediation for Revoke {
    fn label(&self, _: Action) -> &'static str {
        "revoke the user's sign-in sessions"
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
        ctx.per_user(tenant, jobs, &picked, |job| {
            Ok(BatchItem::new(
                Method::POST,
                format!("/users/{}/revokeSignInSessions", segment(&job.case.user_id)),
                None,
            ))
        })
        .await
        .into()
    }
}
