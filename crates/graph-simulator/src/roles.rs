//! Groups and directory roles ("List group transitive members", "List unifiedRoleAssignments",
//! "List roleEligibilitySchedules", "Get directoryRole", "List eligibilitySchedules" of PIM for
//! Groups): a group's users through nested groups, active role assignments and PIM
//! eligibilities by `roleDefinitionId` with the documented `$select` and `$expand=principal`,
//! a role activated from its template, and who is eligible for a group's membership or
//! ownership (the documented filter on `groupId` or `principalId` required).

use std::collections::HashMap;

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::odata::{directory_top, error, filter_values, page_of, select};
use crate::users::find_user;
use crate::{Directory, GraphSimulator};

/// The roles area's paths.
pub(crate) fn route(r: &crate::Request<'_>, dir: &mut Directory) -> Option<Response> {
    Some(match (r.method.clone(), r.segments.as_slice()) {
        (Method::GET, ["groups", id, "transitiveMembers", "microsoft.graph.user"]) => {
            group_user_members(r.s, dir, id, &r.params)
        }
        (
            Method::GET,
            [
                "roleManagement",
                "directory",
                kind @ ("roleAssignments" | "roleEligibilitySchedules"),
            ],
        ) => role_principals(r.s, dir, kind, &r.params),
        (
            Method::GET,
            [
                "identityGovernance",
                "privilegedAccess",
                "group",
                "eligibilitySchedules",
            ],
        ) => group_eligibilities(r.s, dir, &r.params),
        (Method::GET, [role]) if role.starts_with("directoryRoles(roleTemplateId='") => {
            let template = role
                .trim_start_matches("directoryRoles(roleTemplateId='")
                .trim_end_matches("')");
            match dir.directory_roles.get(template) {
                Some(id) => axum::Json(json!({
                    "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#directoryRoles(id,roleTemplateId)/$entity",
                    "id": id, "roleTemplateId": template,
                }))
                .into_response(),
                None => error(
                    StatusCode::NOT_FOUND,
                    "Request_ResourceNotFound",
                    &format!("Resource '{template}' does not exist or one of its queried reference-property objects are not present."),
                ),
            }
        }
        _ => return None,
    })
}

/// Whether `id` is a group of the directory (listed, or a non-role id in `member_of`).
pub(crate) fn group_exists(dir: &Directory, id: &str) -> bool {
    let is_role = dir.directory_roles.values().any(|r| r == id);
    dir.groups.iter().any(|g| g == id)
        || (!is_role && dir.member_of.values().flatten().any(|g| g == id))
}

/// Users that are (transitive) members of group `id`.
pub(crate) fn users_in_group(dir: &Directory, id: &str) -> Vec<String> {
    let mut users: Vec<String> = dir
        .member_of
        .iter()
        .filter(|(_, of)| of.iter().any(|g| g == id))
        .map(|(u, _)| u.clone())
        .collect();
    users.sort();
    users
}

/// `GET /groups/{id}/transitiveMembers/microsoft.graph.user?$select=id&$top=999`: the group's
/// users, direct or through nested groups, paged.
pub(crate) fn group_user_members(
    s: &GraphSimulator,
    dir: &Directory,
    id: &str,
    params: &HashMap<String, String>,
) -> Response {
    if !group_exists(dir, id) {
        return error(
            StatusCode::NOT_FOUND,
            "Request_ResourceNotFound",
            &format!(
                "Resource '{id}' does not exist or one of its queried reference-property objects are not present."
            ),
        );
    }
    let top = match directory_top(params) {
        Ok(top) => top,
        Err(response) => return *response,
    };
    let items = users_in_group(dir, id)
        .into_iter()
        .map(|u| {
            let user = find_user(dir, &u).unwrap_or_else(|| json!({ "id": u }));
            let mut out = select(user, params.get("$select"));
            out["@odata.type"] = "#microsoft.graph.user".into();
            out
        })
        .collect();
    page_of(
        s,
        &format!("/groups/{id}/transitiveMembers/microsoft.graph.user"),
        "users",
        params,
        items,
        top.min(dir.page_size.max(1)),
    )
}

/// Properties of a `unifiedRoleAssignment` (v1.0), what `$select` may name on
/// `roleAssignments`.
const ROLE_ASSIGNMENT_PROPERTIES: &[&str] = &[
    "id",
    "principalId",
    "roleDefinitionId",
    "directoryScopeId",
    "appScopeId",
    "condition",
];
/// Properties of a `unifiedRoleEligibilitySchedule` (v1.0), what `$select` may name on
/// `roleEligibilitySchedules`.
const ROLE_ELIGIBILITY_PROPERTIES: &[&str] = &[
    "id",
    "principalId",
    "roleDefinitionId",
    "directoryScopeId",
    "appScopeId",
    "createdUsing",
    "createdDateTime",
    "modifiedDateTime",
    "status",
    "memberType",
    "scheduleInfo",
];
/// Properties of an expanded `principal` (a `directoryObject`: a user or a group) that
/// `$expand=principal($select=…)` may name.
const PRINCIPAL_PROPERTIES: &[&str] = &[
    "id",
    "deletedDateTime",
    "displayName",
    "userPrincipalName",
    "mail",
    "accountEnabled",
    "userType",
];

/// A `$select` list, each name one of `known` (case-insensitive, as Graph reads property
/// names), in their documented spelling; or the 400 Graph answers for the first unknown one.
pub(crate) fn select_list(
    list: &str,
    known: &[&str],
    type_name: &str,
) -> Result<Vec<String>, Box<Response>> {
    list.split(',')
        .map(|name| {
            known
                .iter()
                .find(|k| k.eq_ignore_ascii_case(name.trim()))
                .map(|k| (*k).to_owned())
                .ok_or_else(|| {
                    Box::new(error(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        &format!(
                            "Could not find a property named '{}' on type '{type_name}'.",
                            name.trim()
                        ),
                    ))
                })
        })
        .collect()
}

/// `GET /roleManagement/directory/roleAssignments|roleEligibilitySchedules
/// ?$filter=roleDefinitionId eq '{id}'[&$select=…][&$expand=principal[($select=…)]]`, the
/// query options both list methods document (`$filter`, `$select`, `$expand`). `$select`
/// names the type's properties; the only navigation expanded is `principal`, whole or with a
/// `$select` of its own (the principal's `@odata.type` always comes, as Graph sends it for a
/// derived type). Active assignments are the members of the activated roles
/// (`directory_roles`, `member_of`) and `role_assignments`; eligibilities are
/// `role_eligibilities`. A built-in role's definition id is its template id.
pub(crate) fn role_principals(
    s: &GraphSimulator,
    dir: &Directory,
    kind: &str,
    params: &HashMap<String, String>,
) -> Response {
    let wanted = match params.get("$filter") {
        None => None,
        Some(filter) => match filter_values(filter, "roleDefinitionId") {
            Some(values) if values.len() == 1 => values.into_iter().next(),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "Invalid filter clause: only roleDefinitionId eq '{id}' is supported here.",
                );
            }
        },
    };
    let (properties, type_name) = if kind == "roleAssignments" {
        (
            ROLE_ASSIGNMENT_PROPERTIES,
            "microsoft.graph.unifiedRoleAssignment",
        )
    } else {
        (
            ROLE_ELIGIBILITY_PROPERTIES,
            "microsoft.graph.unifiedRoleEligibilitySchedule",
        )
    };
    let selected = match params.get("$select") {
        None => None,
        Some(list) => match select_list(list, properties, type_name) {
            Ok(names) => Some(names),
            Err(response) => return *response,
        },
    };
    // None: not expanded; Some(None): the whole principal; Some(Some(names)): those.
    let expand: Option<Option<Vec<String>>> = match params.get("$expand").map(String::as_str) {
        None => None,
        Some("principal") => Some(None),
        Some(other) => {
            let inner = other
                .strip_prefix("principal($select=")
                .and_then(|rest| rest.strip_suffix(')'));
            match inner {
                Some(list) => {
                    match select_list(
                        list,
                        PRINCIPAL_PROPERTIES,
                        "microsoft.graph.directoryObject",
                    ) {
                        Ok(names) => Some(Some(names)),
                        Err(response) => return *response,
                    }
                }
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        &format!("Could not find a property named '{other}' to expand."),
                    );
                }
            }
        }
    };
    let mut pairs: Vec<(String, String)> = Vec::new();
    if kind == "roleAssignments" {
        for (template, role) in &dir.directory_roles {
            for (user, of) in &dir.member_of {
                if of.iter().any(|id| id == role) {
                    pairs.push((user.clone(), template.clone()));
                }
            }
        }
        pairs.extend(dir.role_assignments.iter().cloned());
    } else {
        pairs.extend(dir.role_eligibilities.iter().cloned());
    }
    pairs.retain(|(_, role)| {
        wanted
            .as_deref()
            .is_none_or(|w| w.eq_ignore_ascii_case(role))
    });
    pairs.sort();
    pairs.dedup();
    let items = pairs
        .into_iter()
        .map(|(principal, role)| {
            let mut item = json!({
                "id": format!("{role}_{principal}"),
                "principalId": principal,
                "roleDefinitionId": role,
                "directoryScopeId": "/",
            });
            if kind == "roleEligibilitySchedules" {
                item["memberType"] = "Direct".into();
                item["status"] = "Provisioned".into();
                item["scheduleInfo"] = json!({"startDateTime": "2026-01-01T00:00:00Z", "expiration": {"type": "noExpiration"}});
            }
            if let Some(names) = &selected {
                item = select(item, Some(&names.join(",")));
            }
            if let Some(inner) = &expand {
                item["principal"] = expanded_principal(dir, &principal, inner.as_deref());
            }
            item
        })
        .collect();
    page_of(
        s,
        &format!("/roleManagement/directory/{kind}"),
        &format!("roleManagement/directory/{kind}"),
        params,
        items,
        dir.page_size.max(1),
    )
}

/// Properties of a `privilegedAccessGroupEligibilitySchedule` (v1.0).
const GROUP_ELIGIBILITY_PROPERTIES: &[&str] = &[
    "id",
    "accessId",
    "groupId",
    "principalId",
    "memberType",
    "status",
    "createdDateTime",
    "createdUsing",
    "modifiedDateTime",
    "scheduleInfo",
];

/// `GET /identityGovernance/privilegedAccess/group/eligibilitySchedules?$filter=groupId eq
/// '{id}'` (or `principalId eq '{id}'`: one of the two is required), with `$select` and
/// `$expand=principal[($select=…)]`.
pub(crate) fn group_eligibilities(
    s: &GraphSimulator,
    dir: &Directory,
    params: &HashMap<String, String>,
) -> Response {
    let filter = params.get("$filter").map(String::as_str).unwrap_or("");
    let by_group = filter_values(filter, "groupId").filter(|v| v.len() == 1);
    let by_principal = filter_values(filter, "principalId").filter(|v| v.len() == 1);
    let (field, wanted) = match (by_group, by_principal) {
        (Some(v), None) => ("group", v[0].clone()),
        (None, Some(v)) => ("principal", v[0].clone()),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "Filter on groupId or principalId is required: $filter=groupId eq '{id}'.",
            );
        }
    };
    let selected = match params.get("$select") {
        None => None,
        Some(list) => match select_list(
            list,
            GROUP_ELIGIBILITY_PROPERTIES,
            "microsoft.graph.privilegedAccessGroupEligibilitySchedule",
        ) {
            Ok(names) => Some(names),
            Err(response) => return *response,
        },
    };
    let expand_names = match params.get("$expand").map(String::as_str) {
        None => None,
        Some("principal") => Some(None),
        Some(other) => match other
            .strip_prefix("principal($select=")
            .and_then(|rest| rest.strip_suffix(')'))
            .map(|list| {
                select_list(
                    list,
                    PRINCIPAL_PROPERTIES,
                    "microsoft.graph.directoryObject",
                )
            }) {
            Some(Ok(names)) => Some(Some(names)),
            Some(Err(response)) => return *response,
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("Could not find a property named '{other}' to expand."),
                );
            }
        },
    };
    let mut rows: Vec<&(String, String, String)> = dir
        .group_eligibilities
        .iter()
        .filter(|(group, principal, _)| {
            let value = if field == "group" { group } else { principal };
            value.eq_ignore_ascii_case(&wanted)
        })
        .collect();
    rows.sort();
    let items = rows
        .into_iter()
        .map(|(group, principal, access)| {
            let mut item = json!({
                "id": format!("{group}_{access}_{principal}"),
                "accessId": access,
                "groupId": group,
                "principalId": principal,
                "memberType": "direct",
                "status": "Provisioned",
                "scheduleInfo": {"startDateTime": "2026-01-01T00:00:00Z", "expiration": {"type": "noExpiration"}},
            });
            if let Some(names) = &selected {
                item = select(item, Some(&names.join(",")));
            }
            if let Some(inner) = &expand_names {
                item["principal"] = expanded_principal(dir, principal, inner.as_deref());
            }
            item
        })
        .collect();
    page_of(
        s,
        "/identityGovernance/privilegedAccess/group/eligibilitySchedules",
        "identityGovernance/privilegedAccess/group/eligibilitySchedules",
        params,
        items,
        dir.page_size.max(1),
    )
}

/// A principal as `$expand=principal[($select=…)]` gives it: the user, or a group (any id that
/// is not a user's), with its `@odata.type` kept through `$select`.
fn expanded_principal(
    dir: &Directory,
    principal: &str,
    selected: Option<&[String]>,
) -> serde_json::Value {
    let mut whole = match find_user(dir, principal) {
        Some(mut user) => {
            user["@odata.type"] = "#microsoft.graph.user".into();
            user
        }
        None => json!({ "@odata.type": "#microsoft.graph.group", "id": principal }),
    };
    if let Some(names) = selected {
        let kind = whole["@odata.type"].clone();
        whole = select(whole, Some(&names.join(",")));
        whole["@odata.type"] = kind;
    }
    whole
}
