//! Investigation: who a signal is about, what Identity Protection says about them, and, for a
//! case about to be planned, the user's directory facts, 53011 sign-ins and protection.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use crate::cases::Policy;
use crate::cases::findings::{Findings, RiskRecord, UserFacts};
use crate::event::Subject;
use crate::graph::api::is_object_id;
use crate::graph::{GraphClient, GraphError};

/// Who a signal is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// A user, by object id (lower-case) and UPN when known.
    User { id: String, upn: Option<String> },
    /// No user to act on, and why (deleted, unknown, a retired legacy alert).
    NoUser(String),
}

/// Resolves a subject to a user object id; a UPN costs one directory read.
pub async fn resolve(
    graph: &GraphClient,
    tenant: &str,
    subject: &Subject,
) -> Result<Resolved, GraphError> {
    match subject {
        Subject::User { id: Some(id), upn } if is_object_id(id) => Ok(Resolved::User {
            id: id.to_ascii_lowercase(),
            upn: upn.clone(),
        }),
        Subject::User { id, upn } => {
            let Some(lookup) = upn.as_deref().or(id.as_deref()) else {
                return Ok(Resolved::NoUser("the signal names no user".into()));
            };
            match graph.user_facts(tenant, lookup).await {
                Ok(user) => Ok(Resolved::User {
                    id: user.user_id,
                    upn: user.user_principal_name.or_else(|| upn.clone()),
                }),
                Err(GraphError::NotFound { .. }) => Ok(Resolved::NoUser(format!(
                    "no user {lookup} in the directory (deleted or mistyped)"
                ))),
                Err(e) => Err(e),
            }
        }
        Subject::SecurityAlert { id } => Ok(Resolved::NoUser(format!(
            "legacy security alert {id} names no user, and the legacy /security/alerts API is retired \
             (no data after 2026-08-31): Identity Protection's risk reaches us through the sweep and Sentinel"
        ))),
    }
}

/// (tenant, role template id) -> (role object id if activated, when it was read).
type RoleIds = HashMap<(String, String), (Option<String>, Instant)>;

/// Resolved ids of a tenant's protected directory roles, cached for an hour per tenant.
#[derive(Default)]
pub struct RoleCache {
    roles: Mutex<RoleIds>,
}

const ROLE_CACHE_TTL: Duration = Duration::from_secs(3600);

impl RoleCache {
    async fn role_id(
        &self,
        graph: &GraphClient,
        tenant: &str,
        template: &str,
    ) -> Result<Option<String>, GraphError> {
        let key = (tenant.to_owned(), template.to_owned());
        if let Some((id, at)) = self
            .roles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            && at.elapsed() < ROLE_CACHE_TTL
        {
            return Ok(id.clone());
        }
        let id = graph.directory_role_id(tenant, template).await?;
        self.roles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (id.clone(), Instant::now()));
        Ok(id)
    }
}

/// Why `user_id` is protected from automatic action, if it is: a listed break-glass account,
/// or a (transitive) member of a protected group or holder of a protected directory role.
pub async fn protection(
    graph: &GraphClient,
    roles: &RoleCache,
    policy: &Policy,
    tenant: &str,
    user_id: &str,
) -> Result<Option<String>, GraphError> {
    let safety = &policy.safety;
    if safety.protected_user_ids.iter().any(|id| id == user_id) {
        return Ok(Some("listed in protected_user_ids (break-glass)".into()));
    }
    if safety.protected_group_ids.is_empty() && safety.protected_role_template_ids.is_empty() {
        return Ok(None);
    }
    let mut role_ids = Vec::new();
    for template in &safety.protected_role_template_ids {
        if let Some(id) = roles.role_id(graph, tenant, template).await? {
            role_ids.push((id, template));
        }
    }
    let member_of = graph.transitive_member_of(tenant, user_id).await?;
    if let Some(group) = safety
        .protected_group_ids
        .iter()
        .find(|g| member_of.contains(g))
    {
        return Ok(Some(format!("member of protected group {group}")));
    }
    if let Some((_, template)) = role_ids.iter().find(|(id, _)| member_of.contains(id)) {
        return Ok(Some(format!("holds protected directory role {template}")));
    }
    Ok(None)
}

/// Everything a new case is planned from.
pub async fn investigate(
    graph: &GraphClient,
    roles: &RoleCache,
    policy: &Policy,
    tenant: &str,
    user_id: &str,
    risk: Option<RiskRecord>,
) -> Result<Findings, GraphError> {
    let now = OffsetDateTime::now_utc();
    let since = now - time::Duration::hours(i64::from(policy.lookback_hours));
    let user: UserFacts = graph.user_facts(tenant, user_id).await?;
    let blocked_sign_ins = graph.blocked_sign_ins(tenant, user_id, since).await?;
    let protected = protection(graph, roles, policy, tenant, user_id).await?;
    Ok(Findings {
        user,
        risk,
        blocked_sign_ins,
        registration: None,
        protected,
        investigated_at: now,
    })
}
