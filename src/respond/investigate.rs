//! Investigation: who a signal is about, what Identity Protection says about them, and, for a
//! case about to be planned, the user's directory facts, 53011 sign-ins and protection.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use crate::cases::Policy;
use crate::cases::findings::{Findings, RiskRecord, SignInSummary, UserFacts};
use crate::event::Subject;
use crate::graph::api::{USER_SELECT, is_object_id, segment, sign_in_brief};
use crate::graph::batch::BatchItem;
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
    /// The tenant's role object id for `template` (cached for an hour).
    pub async fn role_id(
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

/// Directory facts of many users: one `$batch` per 20.
pub async fn user_facts_bulk(
    graph: &GraphClient,
    tenant: &str,
    users: &[String],
) -> HashMap<String, Result<UserFacts, GraphError>> {
    let items: Vec<BatchItem> = users
        .iter()
        .map(|u| BatchItem::get(format!("/users/{}?$select={USER_SELECT}", segment(u))))
        .collect();
    let results = graph.batch(tenant, &items).await;
    users
        .iter()
        .cloned()
        .zip(results.into_iter().map(|r| {
            r.and_then(|v| {
                serde_json::from_value::<crate::graph::api::GraphUserDoc>(v)
                    .map(Into::into)
                    .map_err(|e| GraphError::Decode(e.to_string()))
            })
        }))
        .collect()
}

/// How long a tenant-wide listing of 53011 sign-ins answers later groups before it is brought
/// up to date (incrementally).
pub const SIGN_IN_CACHE_TTL: time::Duration = time::Duration::seconds(60);
/// Incremental listings reach this far back, for sign-ins logged late.
const SIGN_IN_OVERLAP: time::Duration = time::Duration::minutes(5);

/// The tenants' 53011 sign-ins as this worker last listed them, so that groups arriving within
/// a minute share one listing and later ones list only what is new (each sign-in once, by id).
#[derive(Default)]
pub struct SignInCache {
    tenants: Mutex<HashMap<String, TenantSignIns>>,
}

struct TenantSignIns {
    since: OffsetDateTime,
    listed_at: OffsetDateTime,
    seen: std::collections::HashSet<String>,
    per_user: HashMap<String, Vec<(OffsetDateTime, String, crate::cases::findings::SignInBrief)>>,
}

impl TenantSignIns {
    fn add(&mut self, sign_in: &serde_json::Value) {
        let (Some(id), Some(user), Some(at)) = (
            sign_in["id"].as_str(),
            sign_in["userId"].as_str(),
            sign_in["createdDateTime"].as_str().and_then(|t| {
                OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            }),
        ) else {
            return;
        };
        if self.seen.insert(id.to_owned()) {
            self.per_user
                .entry(user.to_ascii_lowercase())
                .or_default()
                .push((at, id.to_owned(), sign_in_brief(sign_in)));
        }
    }

    fn summary(&self, user: &str, since: OffsetDateTime) -> SignInSummary {
        let mut summary = SignInSummary::empty(since);
        for (at, _, brief) in self.per_user.get(user).into_iter().flatten() {
            if *at >= since {
                summary.add(brief.clone());
            }
        }
        summary
    }
}

/// 53011 sign-ins of `users` since `since`: one per-user query for a single user; for a group,
/// the tenant's listing (shared by the groups of the next minute, then extended incrementally).
pub async fn sign_ins_bulk(
    graph: &GraphClient,
    cache: &SignInCache,
    tenant: &str,
    users: &[String],
    since: OffsetDateTime,
) -> Result<HashMap<String, SignInSummary>, GraphError> {
    let mut out: HashMap<String, SignInSummary> = users
        .iter()
        .map(|u| (u.clone(), SignInSummary::empty(since)))
        .collect();
    match users {
        [] => return Ok(out),
        [one] => {
            out.insert(
                one.clone(),
                graph.blocked_sign_ins(tenant, one, since).await?,
            );
            return Ok(out);
        }
        _ => {}
    }
    let now = OffsetDateTime::now_utc();
    // Take the tenant's listing out while it is extended (no lock across the request).
    let taken = cache
        .tenants
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(tenant)
        .filter(|t| t.since <= since);
    let mut listing = match taken {
        Some(t) if now - t.listed_at < SIGN_IN_CACHE_TTL => t,
        Some(mut t) => {
            let from = t.listed_at - SIGN_IN_OVERLAP;
            graph
                .blocked_sign_ins_since(tenant, from, |sign_in| {
                    t.add(&sign_in);
                    Ok(())
                })
                .await?;
            t.listed_at = now;
            t
        }
        None => {
            let mut t = TenantSignIns {
                since,
                listed_at: now,
                seen: Default::default(),
                per_user: HashMap::new(),
            };
            graph
                .blocked_sign_ins_since(tenant, since, |sign_in| {
                    t.add(&sign_in);
                    Ok(())
                })
                .await?;
            t
        }
    };
    // Forget what no look-back reaches any more.
    for list in listing.per_user.values_mut() {
        list.retain(|(at, _, _)| *at >= since);
    }
    listing.per_user.retain(|_, list| !list.is_empty());
    listing.seen = listing
        .per_user
        .values()
        .flatten()
        .map(|(_, id, _)| id.clone())
        .collect();
    for user in users {
        out.insert(user.clone(), listing.summary(user, since));
    }
    listing.since = listing.since.max(since);
    cache
        .tenants
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(tenant.to_owned(), listing);
    Ok(out)
}

/// Why each of `users` is protected, if it is: listed ids, then one `$batch` of
/// `transitiveMemberOf` per 20 users checked against protected groups and roles.
pub async fn protection_bulk(
    graph: &GraphClient,
    roles: &RoleCache,
    policy: &Policy,
    tenant: &str,
    users: &[String],
) -> HashMap<String, Result<Option<String>, GraphError>> {
    let safety = &policy.safety;
    let mut out = HashMap::new();
    let mut check = Vec::new();
    for user in users {
        if safety.protected_user_ids.iter().any(|id| id == user) {
            out.insert(
                user.clone(),
                Ok(Some(
                    "listed in protected_user_ids (break-glass)".to_owned(),
                )),
            );
        } else if safety.protected_group_ids.is_empty()
            && safety.protected_role_template_ids.is_empty()
        {
            out.insert(user.clone(), Ok(None));
        } else {
            check.push(user.clone());
        }
    }
    if check.is_empty() {
        return out;
    }
    let mut role_ids = Vec::new();
    for template in &safety.protected_role_template_ids {
        match roles.role_id(graph, tenant, template).await {
            Ok(Some(id)) => role_ids.push((id, template.clone())),
            Ok(None) => {}
            Err(e) => {
                for user in check {
                    out.insert(user, Err(e.clone()));
                }
                return out;
            }
        }
    }
    let items: Vec<BatchItem> = check
        .iter()
        .map(|u| {
            BatchItem::get(format!(
                "/users/{}/transitiveMemberOf?$select=id&$top=999",
                segment(u)
            ))
        })
        .collect();
    let results = graph.batch(tenant, &items).await;
    for (user, result) in check.into_iter().zip(results) {
        let verdict = async {
            let page = result?;
            let mut ids: Vec<String> = page["value"]
                .as_array()
                .map(|v| {
                    v.iter()
                        .filter_map(|m| m["id"].as_str().map(str::to_ascii_lowercase))
                        .collect()
                })
                .unwrap_or_default();
            if page.get("@odata.nextLink").is_some() {
                // Members of very many groups: the whole list, page by page.
                ids = graph.transitive_member_of(tenant, &user).await?;
            }
            if let Some(group) = safety.protected_group_ids.iter().find(|g| ids.contains(g)) {
                return Ok(Some(format!("member of protected group {group}")));
            }
            if let Some((_, template)) = role_ids.iter().find(|(id, _)| ids.contains(id)) {
                return Ok(Some(format!("holds protected directory role {template}")));
            }
            Ok(None)
        }
        .await;
        out.insert(user, verdict);
    }
    out
}

/// Findings for many new cases of one tenant, in bulk: directory facts and protection by
/// `$batch`, sign-ins by one query. A user the directory no longer has gets `NotFound`.
pub async fn investigate_bulk(
    graph: &GraphClient,
    roles: &RoleCache,
    sign_in_cache: &SignInCache,
    policy: &Policy,
    tenant: &str,
    users: &[(String, Option<RiskRecord>)],
) -> HashMap<String, Result<Findings, GraphError>> {
    let now = OffsetDateTime::now_utc();
    let since = now - time::Duration::hours(i64::from(policy.lookback_hours));
    let ids: Vec<String> = users.iter().map(|(u, _)| u.clone()).collect();
    let mut facts = user_facts_bulk(graph, tenant, &ids).await;
    let present: Vec<String> = ids
        .iter()
        .filter(|u| facts.get(*u).is_some_and(Result::is_ok))
        .cloned()
        .collect();
    let sign_ins = sign_ins_bulk(graph, sign_in_cache, tenant, &present, since).await;
    let mut protection = protection_bulk(graph, roles, policy, tenant, &present).await;
    // Registration is a report (5 requests per 10 s per tenant): read only when the policy
    // uses it.
    let mut registration = if policy.needs_registration() {
        registration_bulk(graph, tenant, &present).await
    } else {
        HashMap::new()
    };
    let mut out = HashMap::new();
    for (user, risk) in users {
        let result = (|| {
            let user_facts = facts
                .remove(user)
                .unwrap_or_else(|| Err(GraphError::Decode("no directory answer".into())))?;
            let blocked = match &sign_ins {
                Ok(map) => map
                    .get(user)
                    .cloned()
                    .unwrap_or_else(|| SignInSummary::empty(since)),
                Err(e) => return Err(e.clone()),
            };
            let protected = protection.remove(user).unwrap_or(Ok(None))?;
            let registration = registration.remove(user).unwrap_or(Ok(None))?;
            Ok(Findings {
                user: user_facts,
                risk: risk.clone(),
                blocked_sign_ins: blocked,
                registration,
                protected,
                investigated_at: now,
            })
        })();
        out.insert(user.clone(), result);
    }
    out
}

/// Authentication-method registration of many users
/// (`GET /reports/authenticationMethods/userRegistrationDetails/{id}`, by `$batch`); `None` for
/// a user without details.
pub async fn registration_bulk(
    graph: &GraphClient,
    tenant: &str,
    users: &[String],
) -> HashMap<String, Result<Option<crate::cases::findings::Registration>, GraphError>> {
    let items: Vec<BatchItem> = users
        .iter()
        .map(|u| {
            BatchItem::get(format!(
                "/reports/authenticationMethods/userRegistrationDetails/{}",
                segment(u)
            ))
        })
        .collect();
    let results = graph.batch(tenant, &items).await;
    users
        .iter()
        .cloned()
        .zip(results.into_iter().map(|r| {
            match r {
                Ok(v) => Ok(Some(crate::cases::findings::Registration {
                    is_mfa_registered: v["isMfaRegistered"].as_bool().unwrap_or(false),
                    is_sspr_registered: v["isSsprRegistered"].as_bool().unwrap_or(false),
                    methods_registered: v["methodsRegistered"]
                        .as_array()
                        .map(|m| {
                            m.iter()
                                .filter_map(|x| x.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default(),
                })),
                Err(GraphError::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        }))
        .collect()
}
