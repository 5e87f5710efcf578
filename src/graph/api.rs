//! Typed Graph calls used by investigation and remediation, with `$select` wherever the API
//! supports it (sign-ins support only `$filter`, `$top` and `$skiptoken`).

use percent_encoding::{AsciiSet, CONTROLS, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{GraphClient, GraphError, Listed, Paging};
use crate::cases::findings::{RiskRecord, SignInBrief, SignInSummary, UserFacts};

/// Characters escaped in one URL path segment (a UPN may hold `#`, e.g. `#EXT#`).
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'\'');

/// One URL path segment, escaped.
pub fn segment(value: &str) -> String {
    utf8_percent_encode(value, SEGMENT).to_string()
}

/// A `$filter` expression, escaped for the query string.
pub fn filter(expression: &str) -> String {
    utf8_percent_encode(expression, NON_ALPHANUMERIC).to_string()
}

/// Whether `value` is an Entra object id (a GUID).
pub fn is_object_id(value: &str) -> bool {
    crate::support::is_guid(value)
}

/// An Entra object id: the only thing interpolated into an OData filter.
pub fn object_id(value: &str) -> Result<&str, GraphError> {
    if is_object_id(value) {
        Ok(value)
    } else {
        Err(GraphError::Config(format!("{value:?} is not an object id")))
    }
}

/// RFC 3339 in whole seconds, as OData date-time literals are written.
pub fn odata_time(at: OffsetDateTime) -> Result<String, GraphError> {
    at.replace_nanosecond(0)
        .unwrap_or(at)
        .format(&Rfc3339)
        .map_err(|e| GraphError::Config(e.to_string()))
}

/// Properties read from `riskyUser`.
pub const RISKY_USER_SELECT: &str = "id,userPrincipalName,riskLevel,riskState,riskDetail,riskLastUpdatedDateTime,isDeleted,isProcessing";
/// Properties read from `user`.
pub const USER_SELECT: &str = "id,userPrincipalName,displayName,mail,accountEnabled,onPremisesSyncEnabled,lastPasswordChangeDateTime";
/// The user's manager, read with the user: `manager` is a relationship of `user` that supports
/// `$expand` (one relationship per request, not with advanced queries), on the users list as on
/// one user, with `$select` inside it (Microsoft Graph "List manager", "Use query parameters").
pub const MANAGER_EXPAND: &str = "manager($select=id,mail,userPrincipalName)";
/// Most users a page of a listing with `$expand` holds on directory objects (a known Graph
/// limit: `$expand` returns at most 100 objects a page).
pub const EXPAND_PAGE_MAX: usize = 100;
/// Most values in one `$filter=… in (…)` (Graph's default limit on `in` and `or` clauses).
pub const FILTER_IN_MAX: usize = 15;
/// The `riskState` values of a user Identity Protection considers at risk now.
pub const AT_RISK_FILTER: &str = "riskState eq 'atRisk' or riskState eq 'confirmedCompromised'";

/// An OData string literal: single-quoted, quotes inside doubled.
pub fn quoted(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Which principals hold a directory role: active assignments, or PIM eligibilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleHolding {
    /// `roleManagement/directory/roleAssignments` (active, permanent or activated).
    Assigned,
    /// `roleManagement/directory/roleEligibilitySchedules` (PIM: can activate the role).
    Eligible,
}

/// A principal holding a role, and whether it is a group (whose members then hold it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolePrincipal {
    pub id: String,
    pub is_group: bool,
}

/// `riskyUser`, as Graph returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RiskyUser {
    pub id: String,
    #[serde(default)]
    pub user_principal_name: Option<String>,
    #[serde(default)]
    pub risk_level: Option<String>,
    #[serde(default)]
    pub risk_state: Option<String>,
    #[serde(default)]
    pub risk_detail: Option<String>,
    #[serde(default)]
    pub risk_last_updated_date_time: Option<String>,
    #[serde(default)]
    pub is_deleted: Option<bool>,
}

impl RiskyUser {
    /// The domain's view of the record.
    pub fn record(&self) -> RiskRecord {
        RiskRecord {
            risk_level: self.risk_level.clone().unwrap_or_else(|| "none".into()),
            risk_state: self.risk_state.clone().unwrap_or_else(|| "none".into()),
            risk_detail: self.risk_detail.clone(),
            last_updated: self
                .risk_last_updated_date_time
                .as_deref()
                .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok()),
        }
    }
}

/// `user` as Graph returns it with [`USER_SELECT`].
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GraphUserDoc {
    id: String,
    #[serde(default)]
    user_principal_name: Option<String>,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    mail: Option<String>,
    #[serde(default)]
    account_enabled: Option<bool>,
    #[serde(default)]
    on_premises_sync_enabled: Option<bool>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    last_password_change_date_time: Option<OffsetDateTime>,
    /// Present when read with [`MANAGER_EXPAND`] and the user has a manager.
    #[serde(default)]
    manager: Option<Value>,
}

impl GraphUserDoc {
    /// The domain's view; `expanded` says whether the manager was asked for (a user without
    /// a manager then has none, rather than an unknown one).
    pub fn facts(self, expanded: bool) -> UserFacts {
        let manager = expanded.then(|| crate::cases::findings::Manager {
            mail: self
                .manager
                .as_ref()
                .and_then(|m| m["mail"].as_str())
                .map(str::to_owned),
        });
        UserFacts {
            user_id: self.id.to_ascii_lowercase(),
            user_principal_name: self.user_principal_name,
            display_name: self.display_name,
            mail: self.mail,
            account_enabled: self.account_enabled,
            on_premises_sync_enabled: self.on_premises_sync_enabled,
            password_changed_at: self.last_password_change_date_time,
            manager,
        }
    }
}

impl From<GraphUserDoc> for UserFacts {
    fn from(u: GraphUserDoc) -> Self {
        u.facts(false)
    }
}

/// AADSTS53011: user blocked due to risk on home tenant.
pub const ERROR_BLOCKED_DUE_TO_RISK: i64 = 53011;

fn decode<T: for<'de> Deserialize<'de>>(value: Value) -> Result<T, GraphError> {
    serde_json::from_value(value).map_err(|e| GraphError::Decode(e.to_string()))
}

/// The short summary of a `signIn` a person needs: time, app, IP, location, client, device.
pub fn sign_in_brief(sign_in: &Value) -> SignInBrief {
    let text = |v: &Value| {
        v.as_str()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let join = |parts: Vec<Option<String>>| {
        let parts: Vec<String> = parts.into_iter().flatten().collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    };
    let location = &sign_in["location"];
    let device = &sign_in["deviceDetail"];
    SignInBrief {
        at: text(&sign_in["createdDateTime"]).unwrap_or_default(),
        app: text(&sign_in["appDisplayName"]),
        ip_address: text(&sign_in["ipAddress"]),
        location: join(vec![
            text(&location["city"]),
            text(&location["state"]),
            text(&location["countryOrRegion"]),
        ]),
        client_app: text(&sign_in["clientAppUsed"]),
        device: join(vec![
            text(&device["displayName"]),
            text(&device["operatingSystem"]),
            text(&device["browser"]),
        ]),
    }
}

impl GraphClient {
    /// Identity Protection's record of `user_id`; `Ok(None)` if it has none. Not on the work
    /// path (workers answer from the tenant's view, [`crate::respond::view`]); kept for tools
    /// and for testing Identity Protection's throttling.
    pub async fn risk_record(
        &self,
        tenant: &str,
        user_id: &str,
    ) -> Result<Option<RiskRecord>, GraphError> {
        let path = format!(
            "/identityProtection/riskyUsers/{}?$select={RISKY_USER_SELECT}",
            segment(user_id)
        );
        match self.send(tenant, Method::GET, &path, None).await {
            Ok(value) => decode::<RiskyUser>(value).map(|r| Some(r.record())),
            Err(GraphError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The first request of a listing of the risky users whose record changed since `since`
    /// (when `None`: every user at risk now), 500 a page.
    pub fn risky_users_path(since: Option<OffsetDateTime>) -> Result<String, GraphError> {
        let expression = match since {
            Some(since) => format!("riskLastUpdatedDateTime ge {}", odata_time(since)?),
            None => AT_RISK_FILTER.to_owned(),
        };
        Ok(format!(
            "/identityProtection/riskyUsers?$select={RISKY_USER_SELECT}&$top=500&$filter={}",
            filter(&expression)
        ))
    }

    /// Whether `link` continues a risky users listing on this client's Graph (a link kept in
    /// shared state is followed only then).
    pub fn is_risky_users_link(&self, link: &str) -> bool {
        link.strip_prefix(self.base_url())
            .is_some_and(|rest| rest.starts_with("/identityProtection/riskyUsers?"))
    }

    /// Risky users from `path` ([`GraphClient::risky_users_path`], or the next link a
    /// truncated listing stopped at), at most `max_pages` pages.
    pub async fn risky_users_from(
        &self,
        tenant: &str,
        path: &str,
    ) -> Result<(Vec<RiskyUser>, Listed), GraphError> {
        let mut out = Vec::new();
        let listed = self
            .list_pages(tenant, path, self.max_pages(), |item| {
                out.push(decode::<RiskyUser>(item)?);
                Ok(())
            })
            .await?;
        Ok((out, listed))
    }

    /// Every sign-in of the tenant that failed with 53011 since `since`, handed to `visit`
    /// page by page (1,000 a page, newest first). Says whether every page was read (a
    /// truncated listing misses the oldest).
    pub async fn blocked_sign_ins_since(
        &self,
        tenant: &str,
        since: OffsetDateTime,
        visit: impl FnMut(Value) -> Result<(), GraphError>,
    ) -> Result<Paging, GraphError> {
        self.blocked_sign_ins_within(tenant, since, None, self.max_pages(), visit)
            .await
            .map(|(paging, _)| paging)
    }

    /// As [`GraphClient::blocked_sign_ins_since`], up to `until` when given (`createdDateTime
    /// le`, rounded up to the second, so the window holds every sign-in of `until`), reading at
    /// most `max_pages` pages; also says how many pages were read.
    pub async fn blocked_sign_ins_within(
        &self,
        tenant: &str,
        since: OffsetDateTime,
        until: Option<OffsetDateTime>,
        max_pages: usize,
        visit: impl FnMut(Value) -> Result<(), GraphError>,
    ) -> Result<(Paging, usize), GraphError> {
        let mut expression = format!(
            "status/errorCode eq {ERROR_BLOCKED_DUE_TO_RISK} and createdDateTime ge {}",
            odata_time(since)?
        );
        if let Some(until) = until {
            expression.push_str(&format!(
                " and createdDateTime le {}",
                odata_time(until + time::Duration::SECOND)?
            ));
        }
        let path = format!(
            "/auditLogs/signIns?$filter={}&$top=1000",
            filter(&expression)
        );
        self.for_each_item_up_to(tenant, &path, max_pages, visit)
            .await
    }

    /// The tenant's Conditional Access policies (Identity Protection and CA budget).
    pub async fn conditional_access_policies(
        &self,
        tenant: &str,
    ) -> Result<Vec<Value>, GraphError> {
        self.get_all(tenant, "/identity/conditionalAccess/policies")
            .await
    }

    /// Creates a Conditional Access policy; returns it as created.
    pub async fn create_conditional_access_policy(
        &self,
        tenant: &str,
        policy: &Value,
    ) -> Result<Value, GraphError> {
        self.send(
            tenant,
            Method::POST,
            "/identity/conditionalAccess/policies",
            Some(policy),
        )
        .await
    }

    /// A user by object id or UPN.
    pub async fn user_facts(&self, tenant: &str, id_or_upn: &str) -> Result<UserFacts, GraphError> {
        let path = format!("/users/{}?$select={USER_SELECT}", segment(id_or_upn));
        decode::<GraphUserDoc>(self.send(tenant, Method::GET, &path, None).await?).map(Into::into)
    }

    /// Users whose `property` (`id` or `userPrincipalName`) is one of `values` (at most
    /// [`FILTER_IN_MAX`]): `GET /users?$filter={property} in (…)&$select=…`, one directory
    /// request; with `with_manager`, each user's manager in the same request
    /// (`&$expand=manager($select=id,mail,userPrincipalName)`). Values no user has are simply
    /// absent from the answer.
    pub async fn users_where_in(
        &self,
        tenant: &str,
        property: &str,
        values: &[String],
        with_manager: bool,
    ) -> Result<Vec<UserFacts>, GraphError> {
        if values.is_empty() {
            return Ok(Vec::new());
        }
        if values.len() > FILTER_IN_MAX {
            return Err(GraphError::Config(format!(
                "{} values in one `in` filter: Graph allows {FILTER_IN_MAX}",
                values.len()
            )));
        }
        let list: Vec<String> = values.iter().map(|v| quoted(v)).collect();
        let expand = if with_manager {
            format!("&$expand={}", filter(MANAGER_EXPAND))
        } else {
            String::new()
        };
        let path = format!(
            "/users?$filter={}&$select={USER_SELECT}{expand}&$top={}",
            filter(&format!("{property} in ({})", list.join(","))),
            FILTER_IN_MAX.min(EXPAND_PAGE_MAX)
        );
        let mut out = Vec::new();
        self.for_each_item(tenant, &path, |item| {
            out.push(decode::<GraphUserDoc>(item)?.facts(with_manager));
            Ok(())
        })
        .await?
        .complete()?;
        Ok(out)
    }

    /// Object ids of every user in group `group_id`, directly or through nested groups
    /// (`GET /groups/{id}/transitiveMembers/microsoft.graph.user?$select=id`, 999 a page).
    pub async fn group_user_ids(
        &self,
        tenant: &str,
        group_id: &str,
    ) -> Result<Vec<String>, GraphError> {
        let path = format!(
            "/groups/{}/transitiveMembers/microsoft.graph.user?$select=id&$top=999",
            object_id(group_id)?
        );
        let mut ids = Vec::new();
        self.for_each_item(tenant, &path, |item| {
            if let Some(id) = item["id"].as_str() {
                ids.push(id.to_ascii_lowercase());
            }
            Ok(())
        })
        .await?
        .complete()?;
        Ok(ids)
    }

    /// The principals that hold (or, with [`RoleHolding::Eligible`], may activate) the
    /// directory role `role_definition_id` (a built-in role's template id), tenant-wide:
    /// `GET /roleManagement/directory/roleAssignments|roleEligibilitySchedules
    /// ?$filter=roleDefinitionId eq '…'&$select=principalId&$expand=principal($select=id)`.
    /// Both list methods document `$filter`, `$select` and `$expand`; only the principal's id
    /// and `@odata.type` (user or group) are read, and `$select` takes one resource unit off
    /// the one `$expand` adds.
    pub async fn role_principals(
        &self,
        tenant: &str,
        role_definition_id: &str,
        holding: RoleHolding,
    ) -> Result<Vec<RolePrincipal>, GraphError> {
        let collection = match holding {
            RoleHolding::Assigned => "roleAssignments",
            RoleHolding::Eligible => "roleEligibilitySchedules",
        };
        let path = format!(
            "/roleManagement/directory/{collection}?$filter={}&$select=principalId&$expand=principal($select=id)",
            filter(&format!(
                "roleDefinitionId eq '{}'",
                object_id(role_definition_id)?
            ))
        );
        self.principals(tenant, &path).await
    }

    /// The `principalId`s of a listing whose items `$expand` their principal (role
    /// assignments and eligibilities, PIM-for-Groups eligibilities), each marked a group or not.
    async fn principals(&self, tenant: &str, path: &str) -> Result<Vec<RolePrincipal>, GraphError> {
        let mut out = Vec::new();
        self.for_each_item(tenant, path, |item| {
            if let Some(id) = item["principalId"].as_str() {
                let kind = item["principal"]["@odata.type"].as_str().unwrap_or("");
                out.push(RolePrincipal {
                    id: id.to_ascii_lowercase(),
                    is_group: kind.eq_ignore_ascii_case("#microsoft.graph.group"),
                });
            }
            Ok(())
        })
        .await?
        .complete()?;
        Ok(out)
    }

    /// The mail address of the user's manager, if the user has a manager with one.
    pub async fn manager_mail(
        &self,
        tenant: &str,
        user_id: &str,
    ) -> Result<Option<String>, GraphError> {
        let path = format!(
            "/users/{}/manager?$select=id,mail,userPrincipalName",
            segment(user_id)
        );
        match self.send(tenant, Method::GET, &path, None).await {
            Ok(value) => Ok(value["mail"].as_str().map(str::to_owned)),
            Err(GraphError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The principals eligible through PIM for Groups for membership or ownership of group
    /// `group_id` (`GET /identityGovernance/privilegedAccess/group/eligibilitySchedules
    /// ?$filter=groupId eq '…'`, PrivilegedEligibilitySchedule.Read.AzureADGroup): each can
    /// activate it at any time, so they are protected as its members are. A group principal
    /// is marked so its users can be read.
    pub async fn group_eligible_principals(
        &self,
        tenant: &str,
        group_id: &str,
    ) -> Result<Vec<RolePrincipal>, GraphError> {
        let path = format!(
            "/identityGovernance/privilegedAccess/group/eligibilitySchedules?$filter={}&$select=principalId,accessId&$expand=principal($select=id)",
            filter(&format!("groupId eq '{}'", object_id(group_id)?))
        );
        self.principals(tenant, &path).await
    }

    /// Ids of every group and directory role `user_id` is a member of, directly or not.
    pub async fn transitive_member_of(
        &self,
        tenant: &str,
        user_id: &str,
    ) -> Result<Vec<String>, GraphError> {
        let path = format!(
            "/users/{}/transitiveMemberOf?$select=id&$top=999",
            segment(object_id(user_id)?)
        );
        let mut ids = Vec::new();
        self.for_each_item(tenant, &path, |item| {
            if let Some(id) = item["id"].as_str() {
                ids.push(id.to_ascii_lowercase());
            }
            Ok(())
        })
        .await?
        .complete()?;
        Ok(ids)
    }

    /// The tenant's activated directory role for `role_template_id`; `None` if not activated.
    pub async fn directory_role_id(
        &self,
        tenant: &str,
        role_template_id: &str,
    ) -> Result<Option<String>, GraphError> {
        let path = format!(
            "/directoryRoles(roleTemplateId='{}')?$select=id,roleTemplateId",
            object_id(role_template_id)?
        );
        match self.send(tenant, Method::GET, &path, None).await {
            Ok(value) => Ok(value["id"].as_str().map(str::to_ascii_lowercase)),
            Err(GraphError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sign-ins of `user_id` that failed with 53011 since `since`, summarised while paging
    /// (a count and the newest few, never all records in memory).
    pub async fn blocked_sign_ins(
        &self,
        tenant: &str,
        user_id: &str,
        since: OffsetDateTime,
    ) -> Result<SignInSummary, GraphError> {
        let expression = format!(
            "userId eq '{}' and status/errorCode eq {ERROR_BLOCKED_DUE_TO_RISK} and createdDateTime ge {}",
            object_id(user_id)?,
            odata_time(since)?
        );
        let path = format!(
            "/auditLogs/signIns?$filter={}&$top=1000",
            filter(&expression)
        );
        let mut summary = SignInSummary::empty(since);
        let paging = self
            .for_each_item(tenant, &path, |sign_in| {
                summary.add(sign_in_brief(&sign_in));
                Ok(())
            })
            .await?;
        if let Paging::Truncated { pages } = paging {
            // Newest first: the details kept are the newest, and the count is a lower bound
            // (every rule threshold it passes, the whole count passes too).
            tracing::warn!(
                pages,
                count = summary.count,
                "a user's 53011 sign-ins exceed the page limit: the count is a lower bound"
            );
        }
        Ok(summary)
    }

    /// `POST /users/{id}/revokeSignInSessions`.
    pub async fn revoke_sign_in_sessions(
        &self,
        tenant: &str,
        user_id: &str,
    ) -> Result<(), GraphError> {
        let path = format!("/users/{}/revokeSignInSessions", segment(user_id));
        self.send(tenant, Method::POST, &path, None).await.map(drop)
    }

    /// Sets a temporary password that must be changed at next sign-in.
    pub async fn reset_password(
        &self,
        tenant: &str,
        user_id: &str,
        password: &crate::support::secret::SecretString,
    ) -> Result<(), GraphError> {
        let path = format!("/users/{}", segment(user_id));
        let body = json!({
            "passwordProfile": {
                "forceChangePasswordNextSignIn": true,
                "password": password.expose(),
            }
        });
        self.send(tenant, Method::PATCH, &path, Some(&body))
            .await
            .map(drop)
    }

    /// Blocks (`false`) or unblocks (`true`) sign-in.
    pub async fn set_account_enabled(
        &self,
        tenant: &str,
        user_id: &str,
        enabled: bool,
    ) -> Result<(), GraphError> {
        let path = format!("/users/{}", segment(user_id));
        let body = json!({ "accountEnabled": enabled });
        self.send(tenant, Method::PATCH, &path, Some(&body))
            .await
            .map(drop)
    }

    /// `POST /identityProtection/riskyUsers/dismiss` for up to 60 users.
    pub async fn dismiss_risk(&self, tenant: &str, user_ids: &[&str]) -> Result<(), GraphError> {
        let body = json!({ "userIds": user_ids });
        self.send(
            tenant,
            Method::POST,
            "/identityProtection/riskyUsers/dismiss",
            Some(&body),
        )
        .await
        .map(drop)
    }

    /// `POST /identityProtection/riskyUsers/confirmCompromised` for up to 60 users.
    pub async fn confirm_compromised(
        &self,
        tenant: &str,
        user_ids: &[&str],
    ) -> Result<(), GraphError> {
        let body = json!({ "userIds": user_ids });
        self.send(
            tenant,
            Method::POST,
            "/identityProtection/riskyUsers/confirmCompromised",
            Some(&body),
        )
        .await
        .map(drop)
    }

    /// `POST /users/{sender}/sendMail` with a plain-text body, not saved to Sent Items.
    pub async fn send_mail(
        &self,
        tenant: &str,
        sender: &str,
        to: &[String],
        subject: &str,
        text: &str,
    ) -> Result<(), GraphError> {
        let path = format!("/users/{}/sendMail", segment(sender));
        let recipients: Vec<_> = to
            .iter()
            .map(|address| json!({ "emailAddress": { "address": address } }))
            .collect();
        let body = json!({
            "message": {
                "subject": subject,
                "body": { "contentType": "Text", "content": text },
                "toRecipients": recipients,
            },
            "saveToSentItems": false,
        });
        self.send(tenant, Method::POST, &path, Some(&body))
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_ids_are_strict_guids() {
        assert!(is_object_id("6e7b768e-07e2-4810-8459-485f84f8f204"));
        assert!(!is_object_id("6e7b768e07e2-4810-8459-485f84f8f204-"));
        assert!(!is_object_id("x' or 1 eq 1 or id eq '0000000000000000"));
    }

    #[test]
    fn sign_in_brief_keeps_what_a_person_needs() {
        let sign_in = json!({
            "createdDateTime": "2026-11-25T06:00:00Z", "appDisplayName": "Office 365 Exchange Online",
            "ipAddress": "203.0.113.77", "clientAppUsed": "Browser",
            "location": {"city": "Lagos", "state": "Lagos", "countryOrRegion": "NG"},
            "deviceDetail": {"displayName": "", "operatingSystem": "Linux", "browser": "Firefox 140.0"},
            "status": {"errorCode": 53011}
        });
        let brief = sign_in_brief(&sign_in);
        assert_eq!(brief.location.as_deref(), Some("Lagos, Lagos, NG"));
        assert_eq!(brief.device.as_deref(), Some("Linux, Firefox 140.0"));
        assert_eq!(brief.ip_address.as_deref(), Some("203.0.113.77"));
    }
}
