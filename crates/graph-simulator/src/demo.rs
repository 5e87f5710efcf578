//! The demo tenant: a built-in simulated Microsoft 365 tenant for `serve --demo` and
//! `replay --demo`, so a fresh machine shows the whole path (signal, case, plan, actions,
//! audit) with no Microsoft tenant. Its users cover what the 53011 runbook meets: a user at high
//! risk with blocked sign-ins, one who can self-remediate, a hybrid user synced from
//! on-premises, one not registered for MFA, a break-glass account, and a user not at risk.

use serde_json::{Value, json};

use crate::Directory;

/// The demo tenant's id (the development tenant of the saved events).
pub const TENANT: &str = "84bd8158-6d4d-4958-8b9f-9d6445542f95";

/// Demo users: (object id, UPN, display name).
pub const ADELE: (&str, &str, &str) = (
    "6e7b768e-07e2-4810-8459-485f84f8f204",
    "adele.vance@contoso.onmicrosoft.com",
    "Adele Vance",
);
pub const ALEX: (&str, &str, &str) = (
    "2a1f6c3e-5b4d-4e8f-9a0b-1c2d3e4f5a6b",
    "alex.wilber@contoso.onmicrosoft.com",
    "Alex Wilber",
);
pub const GRADY: (&str, &str, &str) = (
    "3b2e7d4f-6c5e-4f90-8b1c-2d3e4f5a6b7c",
    "grady.archie@contoso.onmicrosoft.com",
    "Grady Archie (synced from on-premises)",
);
pub const ISAIAH: (&str, &str, &str) = (
    "4c3f8e5a-7d6f-4a01-9c2d-3e4f5a6b7c8d",
    "isaiah.langer@contoso.onmicrosoft.com",
    "Isaiah Langer",
);
pub const BREAK_GLASS: (&str, &str, &str) = (
    "5d4a9f6b-8e7a-4b12-8d3e-4f5a6b7c8d9e",
    "break-glass-01@contoso.onmicrosoft.com",
    "Emergency access 01",
);
pub const MEGAN: (&str, &str, &str) = (
    "6e5b0a7c-9f8b-4c23-9e4f-5a6b7c8d9e0f",
    "megan.bowen@contoso.onmicrosoft.com",
    "Megan Bowen",
);
/// Everyone's manager.
pub const MIRIAM: (&str, &str, &str) = (
    "a1b2c3d4-0000-4000-8000-00000000beef",
    "miriam.graham@contoso.onmicrosoft.com",
    "Miriam Graham",
);

fn iso(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn user(who: (&str, &str, &str), synced: bool) -> Value {
    json!({"id": who.0, "userPrincipalName": who.1, "displayName": who.2, "mail": who.1,
        "accountEnabled": true, "onPremisesSyncEnabled": if synced { Value::Bool(true) } else { Value::Null }})
}

fn risky(who: (&str, &str, &str), level: &str, state: &str, minutes_ago: i64) -> Value {
    let now = time::OffsetDateTime::now_utc();
    json!({"id": who.0, "userPrincipalName": who.1, "userDisplayName": who.2, "isDeleted": false,
        "isProcessing": false, "riskLevel": level, "riskState": state, "riskDetail": "none",
        "riskLastUpdatedDateTime": iso(now - time::Duration::minutes(minutes_ago))})
}

fn blocked(
    id: &str,
    who: (&str, &str, &str),
    minutes_ago: i64,
    city: &str,
    country: &str,
    ip: &str,
) -> Value {
    let now = time::OffsetDateTime::now_utc();
    json!({"id": id, "createdDateTime": iso(now - time::Duration::minutes(minutes_ago)),
        "userDisplayName": who.2, "userPrincipalName": who.1, "userId": who.0,
        "appId": "00000002-0000-0ff1-ce00-000000000000", "appDisplayName": "Office 365 Exchange Online",
        "ipAddress": ip, "clientAppUsed": "Browser", "conditionalAccessStatus": "notApplied",
        "isInteractive": true, "riskLevelAggregated": "high", "riskState": "atRisk",
        "status": {"errorCode": 53011, "failureReason": "User blocked due to risk on home tenant.", "additionalDetails": null},
        "deviceDetail": {"deviceId": "", "displayName": null, "operatingSystem": "Linux", "browser": "Firefox 140.0",
            "isCompliant": null, "isManaged": null, "trustType": null},
        "location": {"city": city, "state": city, "countryOrRegion": country,
            "geoCoordinates": {"altitude": null, "latitude": null, "longitude": null}}})
}

fn registration(who: (&str, &str, &str), mfa: bool, sspr: bool) -> Value {
    json!({"id": who.0, "userPrincipalName": who.1, "userDisplayName": who.2, "userType": "member",
        "isAdmin": false, "isMfaCapable": mfa, "isMfaRegistered": mfa, "isSsprRegistered": sspr,
        "isSsprEnabled": true, "isSsprCapable": sspr, "isPasswordlessCapable": false,
        "methodsRegistered": if mfa { json!(["microsoftAuthenticatorPush", "softwareOneTimePasscode"]) } else { json!([]) },
        "lastUpdatedDateTime": iso(time::OffsetDateTime::now_utc())})
}

/// The demo tenant's directory.
pub fn directory() -> Directory {
    let mut d = Directory {
        page_size: 100,
        ..Directory::default()
    };
    for who in [ADELE, ALEX, ISAIAH, BREAK_GLASS, MEGAN, MIRIAM] {
        d.users.push(user(who, false));
    }
    d.users.push(user(GRADY, true));
    for who in [ADELE, ALEX, GRADY, ISAIAH, MEGAN] {
        d.managers.insert(who.0.into(), MIRIAM.0.into());
    }
    d.risky_users
        .insert(ADELE.0.into(), risky(ADELE, "high", "atRisk", 12));
    d.risky_users
        .insert(ALEX.0.into(), risky(ALEX, "medium", "atRisk", 25));
    d.risky_users
        .insert(GRADY.0.into(), risky(GRADY, "medium", "atRisk", 40));
    d.risky_users
        .insert(ISAIAH.0.into(), risky(ISAIAH, "medium", "atRisk", 55));
    d.risky_users.insert(
        BREAK_GLASS.0.into(),
        risky(BREAK_GLASS, "high", "atRisk", 8),
    );
    d.risky_users.insert(
        MEGAN.0.into(),
        risky(MEGAN, "none", "remediated", 60 * 24 * 9),
    );
    for (i, (minutes, city, country, ip)) in [
        (6, "Lagos", "NG", "203.0.113.77"),
        (9, "Lagos", "NG", "203.0.113.77"),
        (31, "Sao Paulo", "BR", "198.51.100.23"),
    ]
    .iter()
    .enumerate()
    {
        d.sign_ins.push(blocked(
            &format!("demo-adele-{i}"),
            ADELE,
            *minutes,
            city,
            country,
            ip,
        ));
    }
    d.sign_ins.push(blocked(
        "demo-grady-0",
        GRADY,
        44,
        "Amsterdam",
        "NL",
        "192.0.2.10",
    ));
    d.sign_ins.push(blocked(
        "demo-glass-0",
        BREAK_GLASS,
        10,
        "Hanoi",
        "VN",
        "198.51.100.99",
    ));
    d.registrations
        .insert(ADELE.0.into(), registration(ADELE, true, false));
    d.registrations
        .insert(ALEX.0.into(), registration(ALEX, true, true));
    d.registrations
        .insert(GRADY.0.into(), registration(GRADY, true, true));
    d.registrations
        .insert(ISAIAH.0.into(), registration(ISAIAH, false, false));
    d.registrations
        .insert(BREAK_GLASS.0.into(), registration(BREAK_GLASS, true, false));
    // The Sentinel incident of events/demo/03 (the demo application holds the Responder role
    // on its workspace), so outcomes are commented on the simulated incident.
    d.sentinel.add_incident(DEMO_INCIDENT);
    // The `users` subscription the demo events come from (a local server's, on its default
    // address), as Graph would list it for the demo application.
    d.subscriptions.push(json!({
        "id": SUBSCRIPTION,
        "resource": "users",
        "changeType": "updated",
        "notificationUrl": "http://127.0.0.1:3000/graph/notifications",
        "lifecycleNotificationUrl": "http://127.0.0.1:3000/graph/lifecycle",
        "expirationDateTime": iso(time::OffsetDateTime::now_utc() + time::Duration::days(28)),
        "applicationId": crate::CLIENT_ID,
        "creatorId": crate::CLIENT_ID,
    }));
    d
}

/// The demo tenant's `users` subscription (`events/demo/02` and `05` come from it).
pub const SUBSCRIPTION: &str = "7f105c7d-2dc5-4530-97cd-4e7ae6534c07";

/// ARM id of the Sentinel incident in `events/demo/03-sentinel-incident-grady-isaiah.json`.
pub const DEMO_INCIDENT: &str = "/subscriptions/d0cfe6b2-9ac0-4464-9919-dccaee2e48c0/resourceGroups/rg-sentinel/providers/Microsoft.OperationalInsights/workspaces/law-sentinel/providers/Microsoft.SecurityInsights/Incidents/7e6d5c4b-0003-4000-8000-000000000003";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_tenant_has_its_six_risk_records() {
        let d = directory();
        assert_eq!(d.risky_users.len(), 6);
        assert!(d.users.iter().any(|u| u["id"] == BREAK_GLASS.0));
    }
}
