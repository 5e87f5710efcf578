//! The user-risk Conditional Access policy the runbook recommends: risky users remediate
//! themselves (MFA and a secure password change) where they can. `check` reports what the
//! tenant has; `create` adds one in report-only mode, never enabled.

use serde::Serialize;
use serde_json::{Value, json};

use crate::cases::Policy;

/// One user-risk policy of the tenant, as `check` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct UserRiskPolicy {
    pub id: String,
    pub display_name: String,
    /// enabled, disabled or enabledForReportingButNotEnforced.
    pub state: String,
    pub user_risk_levels: Vec<String>,
    pub include_users: Vec<String>,
    pub include_groups: Vec<String>,
    pub include_roles: Vec<String>,
    pub exclude_users: Vec<String>,
    pub exclude_groups: Vec<String>,
    pub exclude_roles: Vec<String>,
    /// Grant controls and their operator, e.g. "AND: mfa, passwordChange".
    pub grant: String,
    pub sign_in_frequency: Option<String>,
    /// Protected (break-glass) accounts and groups of our policy that it does not exclude.
    pub break_glass_not_excluded: Vec<String>,
    /// What a security engineer should look at.
    pub findings: Vec<String>,
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The tenant's user-risk policies (those with `userRiskLevels`), checked against `policy`'s
/// protected accounts.
pub fn check(policies: &[Value], policy: &Policy) -> Vec<UserRiskPolicy> {
    let mut out = Vec::new();
    for p in policies {
        let conditions = &p["conditions"];
        let levels = strings(&conditions["userRiskLevels"]);
        if levels.is_empty() {
            continue;
        }
        let users = &conditions["users"];
        let grant = &p["grantControls"];
        let built_in = strings(&grant["builtInControls"]);
        let frequency = &p["sessionControls"]["signInFrequency"];
        let sign_in_frequency = (frequency["isEnabled"] == true).then(|| {
            frequency["frequencyInterval"]
                .as_str()
                .unwrap_or("timeBased")
                .to_owned()
        });
        let exclude_users = strings(&users["excludeUsers"]);
        let exclude_groups = strings(&users["excludeGroups"]);
        let lower = |v: &[String]| v.iter().map(|s| s.to_ascii_lowercase()).collect::<Vec<_>>();
        let (excluded_users, excluded_groups) = (lower(&exclude_users), lower(&exclude_groups));
        let mut break_glass_not_excluded: Vec<String> = policy
            .safety
            .protected_user_ids
            .iter()
            .filter(|id| !excluded_users.contains(id))
            .cloned()
            .collect();
        break_glass_not_excluded.extend(
            policy
                .safety
                .protected_group_ids
                .iter()
                .filter(|id| !excluded_groups.contains(id))
                .cloned(),
        );
        let state = p["state"].as_str().unwrap_or_default().to_owned();
        let mut findings = Vec::new();
        if !break_glass_not_excluded.is_empty() {
            findings.push(format!(
                "break-glass accounts must be excluded; not excluded: {}",
                break_glass_not_excluded.join(", ")
            ));
        }
        if exclude_users.is_empty() && exclude_groups.is_empty() {
            findings.push("excludes nobody: an emergency-access account must be excluded".into());
        }
        if !levels.iter().any(|l| l == "high") {
            findings.push("does not cover high user risk".into());
        }
        if !built_in.iter().any(|c| c == "passwordChange") {
            findings.push("does not require a secure password change".into());
        } else if grant["operator"].as_str() == Some("OR") && built_in.len() > 1 {
            findings.push(
                "grant operator OR: a user can satisfy it without the password change; \
                 Microsoft's template requires all (AND)"
                    .into(),
            );
        }
        if !built_in.iter().any(|c| c == "mfa") && grant["authenticationStrength"].is_null() {
            findings.push("does not require multifactor authentication".into());
        }
        let apps = strings(&conditions["applications"]["includeApplications"]);
        if !apps.iter().any(|a| a == "All") {
            findings.push(format!(
                "covers only some applications ({}): a risky user can still sign in to the rest",
                if apps.is_empty() {
                    "none".to_owned()
                } else {
                    apps.join(", ")
                }
            ));
        }
        if sign_in_frequency.as_deref() != Some("everyTime") {
            findings.push(
                "sign-in frequency is not every time: a remediated session may not be \
                 re-evaluated"
                    .into(),
            );
        }
        if !strings(&users["excludeRoles"]).is_empty() {
            findings.push(format!(
                "excludes directory roles ({}): their holders are never asked to remediate",
                strings(&users["excludeRoles"]).join(", ")
            ));
        }
        match state.as_str() {
            "enabledForReportingButNotEnforced" => findings.push(
                "report-only: validate its sign-in log results, then enable it in the portal"
                    .into(),
            ),
            "disabled" => findings.push("disabled".into()),
            _ => {}
        }
        out.push(UserRiskPolicy {
            id: p["id"].as_str().unwrap_or_default().to_owned(),
            display_name: p["displayName"].as_str().unwrap_or_default().to_owned(),
            state,
            user_risk_levels: levels,
            include_users: strings(&users["includeUsers"]),
            include_groups: strings(&users["includeGroups"]),
            include_roles: strings(&users["includeRoles"]),
            exclude_users,
            exclude_groups,
            exclude_roles: strings(&users["excludeRoles"]),
            grant: format!(
                "{}: {}",
                grant["operator"].as_str().unwrap_or("-"),
                built_in.join(", ")
            ),
            sign_in_frequency,
            break_glass_not_excluded,
            findings,
        });
    }
    out
}

/// A new user-risk policy, in report-only mode: everyone but the protected accounts and
/// groups, all applications, the given user-risk levels, MFA and a password change, sign-in
/// frequency every time (Microsoft's "require password change for high-risk users" template).
pub fn new_policy(display_name: &str, levels: &[String], policy: &Policy) -> Value {
    json!({
        "displayName": display_name,
        "state": "enabledForReportingButNotEnforced",
        "conditions": {
            "userRiskLevels": levels,
            "clientAppTypes": ["all"],
            "applications": { "includeApplications": ["All"] },
            "users": {
                "includeUsers": ["All"],
                "excludeUsers": policy.safety.protected_user_ids,
                "excludeGroups": policy.safety.protected_group_ids,
            },
        },
        "grantControls": { "operator": "AND", "builtInControls": ["mfa", "passwordChange"] },
        "sessionControls": {
            "signInFrequency": {
                "isEnabled": true,
                "authenticationType": "primaryAndSecondaryAuthentication",
                "frequencyInterval": "everyTime",
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_that_forgets_break_glass_is_reported() {
        let mut policy = Policy::default_policy();
        policy.safety.protected_user_ids = vec!["00000000-0000-4000-8000-00000000aaaa".into()];
        let tenant = vec![
            json!({"id": "1", "displayName": "MFA for admins", "state": "enabled",
                "conditions": {"userRiskLevels": [], "users": {"includeRoles": ["x"]}}}),
            json!({"id": "2", "displayName": "CA008", "state": "enabled",
                "conditions": {"userRiskLevels": ["high"], "users": {"includeUsers": ["All"], "excludeUsers": []}},
                "grantControls": {"operator": "AND", "builtInControls": ["passwordChange"]}}),
        ];
        let found = check(&tenant, &policy);
        assert_eq!(found.len(), 1, "only user-risk policies");
        assert_eq!(
            found[0].break_glass_not_excluded,
            ["00000000-0000-4000-8000-00000000aaaa"]
        );
        assert!(found[0].findings.iter().any(|f| f.contains("break-glass")));
        let created = new_policy("x", &["high".into()], &policy);
        assert_eq!(created["state"], "enabledForReportingButNotEnforced");
        assert_eq!(
            created["conditions"]["users"]["excludeUsers"][0],
            "00000000-0000-4000-8000-00000000aaaa"
        );
        let recheck = check(&[created], &policy);
        assert!(recheck[0].break_glass_not_excluded.is_empty());
        // What we create passes our own check, apart from being report-only.
        assert_eq!(
            recheck[0].findings,
            ["report-only: validate its sign-in log results, then enable it in the portal"]
        );
    }

    #[test]
    fn weak_grants_partial_applications_and_role_exclusions_are_reported() {
        let policy = Policy::default_policy();
        let tenant = vec![json!({"id": "3", "displayName": "weak", "state": "enabled",
            "conditions": {"userRiskLevels": ["high"],
                "applications": {"includeApplications": ["00000002-0000-0ff1-ce00-000000000000"]},
                "users": {"includeUsers": ["All"], "excludeUsers": ["x"],
                    "excludeRoles": ["62e90394-69f5-4237-9190-012177145e10"]}},
            "grantControls": {"operator": "OR", "builtInControls": ["mfa", "passwordChange"]}})];
        let findings = &check(&tenant, &policy)[0].findings;
        for expected in [
            "grant operator OR",
            "covers only some applications",
            "sign-in frequency is not every time",
            "excludes directory roles",
        ] {
            assert!(
                findings.iter().any(|f| f.contains(expected)),
                "{expected:?} not in {findings:?}"
            );
        }
        assert!(!findings.iter().any(|f| f.contains("multifactor")));
    }
}
