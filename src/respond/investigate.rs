//! Investigation: who a signal is about, what Identity Protection says about them, and, for a
//! case about to be planned, the user's directory facts, 53011 sign-ins, registration and
//! protection, read in bulk: users 15 to a `$filter=id in (…)` request, the tenant's protected
//! accounts once per tenant (group members, role holders and PIM-eligible role holders), the
//! tenant's 53011 sign-ins in one listing.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use crate::cases::Policy;
use crate::cases::findings::{
    Capable, Findings, Registration, RiskRecord, SignInSummary, UserFacts,
};
use crate::event::Subject;
use crate::graph::api::{
    FILTER_IN_MAX, MANAGER_EXPAND, RoleHolding, USER_SELECT, is_object_id, segment, sign_in_brief,
};
use crate::graph::batch::BatchItem;
use crate::graph::{GraphClient, GraphError};

/// Who a signal is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// A user, by object id (lower-case), and the UPN the directory gave when it was read
    /// (never the one the signal claimed: the object id is the identity, names come from the
    /// directory).
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
        Subject::User { id: Some(id), .. } if is_object_id(id) => Ok(Resolved::User {
            id: id.to_ascii_lowercase(),
            upn: None,
        }),
        Subject::User { id, upn } => {
            let Some(lookup) = upn.as_deref().or(id.as_deref()) else {
                return Ok(Resolved::NoUser("the signal names no user".into()));
            };
            match graph.user_facts(tenant, lookup).await {
                Ok(user) => Ok(Resolved::User {
                    id: user.user_id,
                    upn: user.user_principal_name,
                }),
                Err(GraphError::NotFound { .. }) => Ok(Resolved::NoUser(format!(
                    "no user {lookup} in the directory (deleted or mistyped)"
                ))),
                Err(e) => Err(e),
            }
        }
        Subject::SecurityAlert { id } => Ok(Resolved::NoUser(legacy_alert(id))),
    }
}

fn legacy_alert(id: &str) -> String {
    format!(
        "legacy security alert {id} names no user, and the legacy /security/alerts API is retired \
         (no data after 2026-08-31): Identity Protection's risk reaches us through the sweep and Sentinel"
    )
}

/// Users read at once (each read a request of up to [`FILTER_IN_MAX`] users).
const READS_AT_ONCE: usize = 4;

/// Resolves many subjects at once, one result per subject, in order: object ids as they are;
/// UPNs (and anything else that is not an object id) by
/// `GET /users?$filter=userPrincipalName in (…)`, 15 to a request, instead of one read each.
pub async fn resolve_bulk(
    graph: &GraphClient,
    tenant: &str,
    subjects: &[Subject],
) -> Vec<Result<Resolved, GraphError>> {
    let mut out: Vec<Option<Result<Resolved, GraphError>>> = vec![None; subjects.len()];
    // lower-cased lookup -> the subjects asking
    let mut lookups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, subject) in subjects.iter().enumerate() {
        match subject {
            Subject::User { id: Some(id), .. } if is_object_id(id) => {
                out[i] = Some(Ok(Resolved::User {
                    id: id.to_ascii_lowercase(),
                    upn: None,
                }));
            }
            Subject::User { id, upn } => match upn.as_deref().or(id.as_deref()) {
                Some(lookup) => lookups
                    .entry(lookup.to_ascii_lowercase())
                    .or_default()
                    .push(i),
                None => out[i] = Some(Ok(Resolved::NoUser("the signal names no user".into()))),
            },
            Subject::SecurityAlert { id } => out[i] = Some(Ok(Resolved::NoUser(legacy_alert(id)))),
        }
    }
    let wanted: Vec<String> = lookups.keys().cloned().collect();
    let chunks: Vec<&[String]> = wanted.chunks(FILTER_IN_MAX).collect();
    let mut answers = Vec::with_capacity(chunks.len());
    for wave in chunks.chunks(READS_AT_ONCE) {
        let reads = wave
            .iter()
            .map(|chunk| graph.users_where_in(tenant, "userPrincipalName", chunk, false));
        answers.extend(
            wave.iter()
                .copied()
                .zip(futures_util::future::join_all(reads).await),
        );
    }
    for (chunk, answer) in answers {
        let found: HashMap<String, UserFacts> = match answer {
            Ok(users) => users
                .into_iter()
                .filter_map(|u| {
                    u.user_principal_name
                        .clone()
                        .map(|upn| (upn.to_ascii_lowercase(), u))
                })
                .collect(),
            Err(e) => {
                for lookup in chunk {
                    for i in lookups.get(lookup).into_iter().flatten() {
                        out[*i] = Some(Err(e.clone()));
                    }
                }
                continue;
            }
        };
        for lookup in chunk {
            for i in lookups.get(lookup).into_iter().flatten() {
                out[*i] = Some(Ok(match found.get(lookup) {
                    Some(user) => Resolved::User {
                        id: user.user_id.clone(),
                        upn: user.user_principal_name.clone(),
                    },
                    None => Resolved::NoUser(format!(
                        "no user {lookup} in the directory (deleted or mistyped)"
                    )),
                }));
            }
        }
    }
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err(GraphError::Decode("subject not resolved".into()))))
        .collect()
}

/// How long a tenant's protected accounts, as read, are trusted. Short: an account that
/// becomes Global Administrator is protected within this long.
pub const PROTECTION_TTL: Duration = Duration::from_secs(300);

/// The tenant's protected accounts as read at one time: user id (lower-case) -> why.
#[derive(Debug, Default)]
pub struct Protected {
    reasons: HashMap<String, String>,
}

impl Protected {
    /// Why `user_id` is protected, if it is.
    pub fn reason(&self, user_id: &str) -> Option<&str> {
        self.reasons
            .get(&user_id.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// How many accounts are protected.
    pub fn len(&self) -> usize {
        self.reasons.len()
    }

    /// Whether no account is protected.
    pub fn is_empty(&self) -> bool {
        self.reasons.is_empty()
    }

    fn add(&mut self, user_id: &str, why: impl FnOnce() -> String) {
        self.reasons
            .entry(user_id.to_ascii_lowercase())
            .or_insert_with(why);
    }
}

type ProtectedByTenant = HashMap<String, (Arc<Protected>, Instant)>;

/// Each tenant's protected accounts (members of the protected groups, holders of the protected
/// directory roles, and principals eligible for them through PIM), read once per tenant and
/// kept [`PROTECTION_TTL`], instead of each user's `transitiveMemberOf`.
#[derive(Default)]
pub struct RoleCache {
    tenants: Mutex<ProtectedByTenant>,
}

impl RoleCache {
    /// The tenant's protected accounts under `policy`, read at most [`PROTECTION_TTL`] ago.
    /// Reads (each paged, on the directory budget): per protected group
    /// `GET /groups/{id}/transitiveMembers/microsoft.graph.user?$select=id`; per protected role
    /// `GET /roleManagement/directory/roleAssignments?$filter=roleDefinitionId eq '…'` and
    /// `…/roleEligibilitySchedules?…` (eligible administrators are protected too: they can
    /// activate the role at any time), and the members of any group holding the role.
    pub async fn protected(
        &self,
        graph: &GraphClient,
        policy: &Policy,
        tenant: &str,
    ) -> Result<Arc<Protected>, GraphError> {
        let safety = &policy.safety;
        let key = format!(
            "{tenant}|{}|{}",
            safety.protected_group_ids.join(","),
            safety.protected_role_template_ids.join(",")
        );
        if let Some((protected, at)) = self
            .tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            && at.elapsed() < PROTECTION_TTL
        {
            return Ok(protected.clone());
        }
        let protected = Arc::new(
            read_protected(graph, policy, tenant)
                .await
                .map_err(protection_unreadable)?,
        );
        tracing::info!(tenant_id = %tenant, protected = protected.len(), "protected accounts read");
        self.tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (protected.clone(), Instant::now()));
        Ok(protected)
    }
}

/// A protection read that Graph answered 404 (a protected group deleted or mistyped in
/// `protected_group_ids`) is a configuration error that waits for a person, never "the user no
/// longer exists": that would close every new case of the tenant with no action.
fn protection_unreadable(e: GraphError) -> GraphError {
    match e {
        GraphError::NotFound { code, message } => GraphError::Config(format!(
            "protected accounts could not be read (404 {code}: {message}): check \
             protected_group_ids and protected_role_template_ids"
        )),
        other => other,
    }
}

/// The protected accounts of `tenant` under `policy`, read from Graph.
async fn read_protected(
    graph: &GraphClient,
    policy: &Policy,
    tenant: &str,
) -> Result<Protected, GraphError> {
    let safety = &policy.safety;
    let mut protected = Protected::default();
    for group in &safety.protected_group_ids {
        protect_group(graph, tenant, group, &mut protected, &|| {
            format!("member of protected group {group}")
        })
        .await?;
    }
    for (holding, how) in [
        (RoleHolding::Assigned, "holds"),
        (RoleHolding::Eligible, "is eligible (PIM) for"),
    ] {
        for template in &safety.protected_role_template_ids {
            for principal in graph.role_principals(tenant, template, holding).await? {
                if principal.is_group {
                    let why = || {
                        format!(
                            "{how} protected directory role {template} through group {}",
                            principal.id
                        )
                    };
                    protect_group(graph, tenant, &principal.id, &mut protected, &why).await?;
                } else {
                    protected.add(&principal.id, || {
                        format!("{how} protected directory role {template}")
                    });
                }
            }
        }
    }
    Ok(protected)
}

/// Protects the users of `group`: its (transitive) members, and those eligible through PIM
/// for Groups to become a member or owner (they can activate it at any time), directly or
/// through an eligible group.
async fn protect_group(
    graph: &GraphClient,
    tenant: &str,
    group: &str,
    protected: &mut Protected,
    why: &(dyn Fn() -> String + Sync),
) -> Result<(), GraphError> {
    for user in graph.group_user_ids(tenant, group).await? {
        protected.add(&user, why);
    }
    for principal in graph.group_eligible_principals(tenant, group).await? {
        let eligible = || format!("{} (eligible through PIM for Groups)", why());
        if principal.is_group {
            for user in graph.group_user_ids(tenant, &principal.id).await? {
                protected.add(&user, eligible);
            }
        } else {
            protected.add(&principal.id, eligible);
        }
    }
    Ok(())
}

/// Why `user_id` is protected from automatic action, if it is: a listed break-glass account,
/// or a (transitive) member of a protected group, or a holder of (or eligible for) a
/// protected directory role.
pub async fn protection(
    graph: &GraphClient,
    roles: &RoleCache,
    policy: &Policy,
    tenant: &str,
    user_id: &str,
) -> Result<Option<String>, GraphError> {
    let mut verdicts = protection_bulk(graph, roles, policy, tenant, &[user_id.to_owned()]).await;
    verdicts.remove(user_id).unwrap_or(Ok(None))
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
    let now = graph.now();
    let since = now - time::Duration::hours(i64::from(policy.lookback_hours));
    let user: UserFacts = graph.user_facts(tenant, user_id).await?;
    let blocked_sign_ins = graph.blocked_sign_ins(tenant, user_id, since).await?;
    let protected = protection(graph, roles, policy, tenant, user_id).await?;
    Ok(Findings {
        user,
        risk,
        blocked_sign_ins,
        registration: None,
        registration_unknown: None,
        protected,
        investigated_at: now,
    })
}

/// Directory facts of many users: object ids 15 to a request
/// (`GET /users?$filter=id in (…)&$select=…`), anything else by `$batch`; with `with_manager`
/// (the policy mails managers), each user's manager in the same request (`$expand=manager`),
/// instead of a `GET /users/{id}/manager` per user. A user the directory does not have gets
/// `NotFound`.
pub async fn user_facts_bulk(
    graph: &GraphClient,
    tenant: &str,
    users: &[String],
    with_manager: bool,
) -> HashMap<String, Result<UserFacts, GraphError>> {
    let mut out = HashMap::new();
    let (ids, others): (Vec<String>, Vec<String>) =
        users.iter().cloned().partition(|u| is_object_id(u));
    let mut ids: Vec<String> = ids;
    ids.sort_by_key(|u| u.to_ascii_lowercase());
    ids.dedup_by_key(|u| u.to_ascii_lowercase());
    let chunks: Vec<&[String]> = ids.chunks(FILTER_IN_MAX).collect();
    let mut answers = Vec::with_capacity(chunks.len());
    for wave in chunks.chunks(READS_AT_ONCE) {
        let reads = wave
            .iter()
            .map(|chunk| graph.users_where_in(tenant, "id", chunk, with_manager));
        answers.extend(
            wave.iter()
                .copied()
                .zip(futures_util::future::join_all(reads).await),
        );
    }
    for (chunk, answer) in answers {
        match answer {
            Ok(found) => {
                let mut found: HashMap<String, UserFacts> = found
                    .into_iter()
                    .map(|u| (u.user_id.to_ascii_lowercase(), u))
                    .collect();
                for id in chunk {
                    let result = found.remove(&id.to_ascii_lowercase()).ok_or_else(|| {
                        GraphError::NotFound {
                            code: "Request_ResourceNotFound".into(),
                            message: format!("no user {id} in the directory"),
                        }
                    });
                    out.insert(id.clone(), result);
                }
            }
            Err(e) => {
                for id in chunk {
                    out.insert(id.clone(), Err(e.clone()));
                }
            }
        }
    }
    // Every spelling the caller used answers.
    let by_lower: HashMap<String, Result<UserFacts, GraphError>> = out
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    for user in users {
        if !out.contains_key(user)
            && let Some(result) = by_lower.get(&user.to_ascii_lowercase())
        {
            out.insert(user.clone(), result.clone());
        }
    }
    if !others.is_empty() {
        let expand = if with_manager {
            format!("&$expand={}", crate::graph::api::filter(MANAGER_EXPAND))
        } else {
            String::new()
        };
        let items: Vec<BatchItem> = others
            .iter()
            .map(|u| {
                BatchItem::get(format!(
                    "/users/{}?$select={USER_SELECT}{expand}",
                    segment(u)
                ))
            })
            .collect();
        let results = graph.batch(tenant, &items).await;
        for (user, result) in others.into_iter().zip(results) {
            out.insert(
                user,
                result.and_then(|v| {
                    serde_json::from_value::<crate::graph::api::GraphUserDoc>(v)
                        .map(|doc| doc.facts(with_manager))
                        .map_err(|e| GraphError::Decode(e.to_string()))
                }),
            );
        }
    }
    out
}

/// How long a tenant-wide listing of 53011 sign-ins answers later groups before it is brought
/// up to date (incrementally).
pub const SIGN_IN_CACHE_TTL: time::Duration = time::Duration::seconds(60);
/// Incremental listings reach this far back, for sign-ins logged late (the sweep's overlap).
const SIGN_IN_OVERLAP: time::Duration = super::sweep::SIGN_IN_OVERLAP;

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
    let now = graph.now();
    // Take the tenant's listing out while it is extended (no lock across the request).
    let taken = cache
        .tenants
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(tenant)
        .filter(|t| t.since <= since);
    let (mut listing, paging) = match taken {
        Some(t) if now - t.listed_at < SIGN_IN_CACHE_TTL => (t, crate::graph::Paging::Complete),
        Some(mut t) => {
            let from = t.listed_at - SIGN_IN_OVERLAP;
            let paging = graph
                .blocked_sign_ins_since(tenant, from, |sign_in| {
                    t.add(&sign_in);
                    Ok(())
                })
                .await?;
            t.listed_at = now;
            (t, paging)
        }
        None => {
            let mut t = TenantSignIns {
                since,
                listed_at: now,
                seen: Default::default(),
                per_user: HashMap::new(),
            };
            let paging = graph
                .blocked_sign_ins_since(tenant, since, |sign_in| {
                    t.add(&sign_in);
                    Ok(())
                })
                .await?;
            (t, paging)
        }
    };
    if !paging.is_complete() {
        // Newest first: the oldest sign-ins of the window were not read, so the listing would
        // count some users short. Each user is asked on their own instead, and nothing is kept.
        tracing::warn!(tenant_id = %tenant, ?paging, "tenant-wide 53011 listing truncated: reading per user");
        for user in users {
            out.insert(
                user.clone(),
                graph.blocked_sign_ins(tenant, user, since).await?,
            );
        }
        return Ok(out);
    }
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

/// Why each of `users` is protected, if it is: listed break-glass ids, then the tenant's
/// protected accounts ([`RoleCache::protected`], read once per tenant).
pub async fn protection_bulk(
    graph: &GraphClient,
    roles: &RoleCache,
    policy: &Policy,
    tenant: &str,
    users: &[String],
) -> HashMap<String, Result<Option<String>, GraphError>> {
    let safety = &policy.safety;
    let listed = |user: &str| {
        safety
            .protected_user_ids
            .iter()
            .any(|id| id.eq_ignore_ascii_case(user))
    };
    let mut out = HashMap::new();
    let mut check = Vec::new();
    for user in users {
        if listed(user) {
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
    match roles.protected(graph, policy, tenant).await {
        Ok(protected) => {
            for user in check {
                let why = protected.reason(&user).map(str::to_owned);
                out.insert(user, Ok(why));
            }
        }
        Err(e) => {
            for user in check {
                out.insert(user, Err(e.clone()));
            }
        }
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
    let now = graph.now();
    let since = now - time::Duration::hours(i64::from(policy.lookback_hours));
    let ids: Vec<String> = users.iter().map(|(u, _)| u.clone()).collect();
    let mut facts = user_facts_bulk(graph, tenant, &ids, policy.mails_managers()).await;
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
            // A registration read that failed for good (no licence, no permission) or found no
            // record leaves registration unknown, noted on the case: the plan then offers no
            // self-remediation, and everything else goes ahead. A passing failure is retried.
            let (registration, registration_unknown) = match registration.remove(user) {
                None => (None, None),
                Some(Ok(Some(found))) => (Some(found), None),
                Some(Ok(None)) => (
                    None,
                    Some(
                        "registration unknown: no userRegistrationDetails record for the user"
                            .to_owned(),
                    ),
                ),
                Some(Err(e)) if e.is_transient() => return Err(e),
                Some(Err(e)) => (
                    None,
                    Some(format!(
                        "registration unknown: userRegistrationDetails could not be read ({e})"
                    )),
                ),
            };
            Ok(Findings {
                user: user_facts,
                risk: risk.clone(),
                blocked_sign_ins: blocked,
                registration,
                registration_unknown,
                protected,
                investigated_at: now,
            })
        })();
        out.insert(user.clone(), result);
    }
    out
}

/// Authentication-method registration of many users
/// (`GET /reports/authenticationMethods/userRegistrationDetails/{id}`, by `$batch`, at most 5
/// to a batch: each is a reports request, 5 per 10 s per app and tenant). The method takes no
/// OData query parameters (no `$select`): the whole record comes back, `isMfaCapable` and
/// `isSsprCapable` with it. `None` for a user without a record (404).
pub async fn registration_bulk(
    graph: &GraphClient,
    tenant: &str,
    users: &[String],
) -> HashMap<String, Result<Option<Registration>, GraphError>> {
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
        .zip(results.into_iter().map(|r| match r {
            Ok(v) => Ok(Some(registration_of(&v))),
            Err(GraphError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }))
        .collect()
}

/// A `userRegistrationDetails` record (as the documented example shows it, under `value`, or
/// bare).
fn registration_of(answer: &serde_json::Value) -> Registration {
    let record = answer
        .get("value")
        .filter(|v| v.is_object())
        .unwrap_or(answer);
    let flag = |name: &str| record[name].as_bool();
    let capable = match (flag("isMfaCapable"), flag("isSsprCapable")) {
        (Some(mfa), Some(sspr)) => Some(Capable { mfa, sspr }),
        _ => None,
    };
    Registration {
        is_mfa_registered: flag("isMfaRegistered").unwrap_or(false),
        is_sspr_registered: flag("isSsprRegistered").unwrap_or(false),
        methods_registered: record["methodsRegistered"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        capable,
    }
}
