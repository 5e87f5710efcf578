//! Microsoft Sentinel payloads sent by a SOAR playbook's HTTP action: alerts (SecurityAlert
//! schema) and incidents (the incident trigger's `object` with related alerts and entities).
//! Every Account entity becomes a [`RiskEvent`].

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::Config;
use crate::event::{EventSource, RiskEvent, RiskLevel, Subject, derive_event_id};

/// Why a Sentinel payload cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SentinelError {
    /// Not JSON at all (400).
    #[error("body is not JSON: {0}")]
    NotJson(String),
    /// JSON, but not a known schema (422).
    #[error("payload is not a Sentinel alert or incident: missing field `{0}`")]
    MissingField(&'static str),
    /// A known schema without any usable account (422).
    #[error("payload has no Account entity with AadUserId or a UPN")]
    NoAccount,
}

/// Events from one payload, and the accounts dropped (tenant not allowed or unknown).
#[derive(Debug, Default)]
pub struct SentinelOutcome {
    pub events: Vec<RiskEvent>,
    pub dropped: Vec<String>,
}

/// One account named by the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Account {
    id: Option<String>,
    upn: Option<String>,
    tenant: Option<String>,
}

struct Payload {
    kind: &'static str,
    source_id: String,
    severity: RiskLevel,
    detected_at: Option<OffsetDateTime>,
    accounts: Vec<Account>,
}

/// Parses a playbook payload into events for the allowed tenants.
pub fn parse(body: &[u8], config: &Config) -> Result<SentinelOutcome, SentinelError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| SentinelError::NotJson(e.to_string()))?;
    let payload = if value.get("object").is_some() {
        incident(&value)?
    } else {
        alert(&value)?
    };
    if payload.accounts.is_empty() {
        return Err(SentinelError::NoAccount);
    }
    let default_tenant = match config.allowed_tenants.as_slice() {
        [only] => Some(only.clone()),
        _ => None,
    };
    let mut outcome = SentinelOutcome::default();
    let mut seen: Vec<(String, Subject)> = Vec::new();
    for account in payload.accounts {
        let Some(tenant) = account
            .tenant
            .map(|t| t.to_ascii_lowercase())
            .or_else(|| default_tenant.clone())
        else {
            outcome
                .dropped
                .push("account has no AadTenantId and no single default tenant".into());
            continue;
        };
        if !config.tenant_allowed(&tenant) {
            outcome
                .dropped
                .push(format!("tenant {tenant} is not allowed"));
            continue;
        }
        let subject = Subject::User {
            id: account.id.clone(),
            upn: account.upn.clone(),
        };
        if seen.iter().any(|(t, s)| *t == tenant && *s == subject) {
            continue;
        }
        let who = account
            .id
            .as_deref()
            .or(account.upn.as_deref())
            .unwrap_or("");
        outcome.events.push(RiskEvent {
            // The severity is part of the id: an alert re-sent at a higher severity is a new
            // signal (it escalates the case), an identical re-send is the same one.
            event_id: derive_event_id(&[
                "sentinel",
                payload.kind,
                &payload.source_id,
                &tenant,
                who,
                &format!("{:?}", payload.severity),
            ]),
            tenant_id: tenant.clone(),
            source: EventSource::Sentinel,
            subject: subject.clone(),
            risk_level: payload.severity,
            detected_at: payload.detected_at.unwrap_or_else(OffsetDateTime::now_utc),
            source_id: payload.source_id.clone(),
            resource_data: None,
        });
        seen.push((tenant, subject));
    }
    Ok(outcome)
}

fn str_field<'a>(value: &'a Value, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|n| value.get(*n).and_then(Value::as_str))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn timestamp(value: &Value, names: &[&str]) -> Option<OffsetDateTime> {
    str_field(value, names).and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
}

/// SecurityAlert: `SystemAlertId`, `Severity`/`AlertSeverity`, `Entities` (array, or the JSON
/// string the Log Analytics table stores).
fn alert(value: &Value) -> Result<Payload, SentinelError> {
    let source_id = str_field(value, &["SystemAlertId"])
        .ok_or(SentinelError::MissingField("SystemAlertId"))?
        .to_owned();
    let entities = value
        .get("Entities")
        .ok_or(SentinelError::MissingField("Entities"))?;
    let parsed;
    let entities = match entities {
        Value::String(text) => {
            parsed = serde_json::from_str::<Value>(text)
                .map_err(|_| SentinelError::MissingField("Entities"))?;
            &parsed
        }
        other => other,
    };
    let entities = entities
        .as_array()
        .ok_or(SentinelError::MissingField("Entities"))?;
    let accounts = entities
        .iter()
        .filter(|e| {
            str_field(e, &["Type", "type"]).is_some_and(|t| t.eq_ignore_ascii_case("account"))
        })
        .filter_map(|e| {
            account(
                str_field(e, &["AadUserId"]),
                str_field(e, &["UserPrincipalName", "Upn"]),
                str_field(e, &["Name"]),
                str_field(e, &["UPNSuffix", "UpnSuffix"]),
                str_field(e, &["AadTenantId"]),
            )
        })
        .collect();
    Ok(Payload {
        kind: "alert",
        source_id,
        severity: str_field(value, &["Severity", "AlertSeverity"])
            .map_or(RiskLevel::Unknown, RiskLevel::parse_lenient),
        detected_at: timestamp(value, &["StartTimeUtc", "StartTime", "TimeGenerated"]),
        accounts,
    })
}

/// Incident trigger body: `object.name`, `object.properties.severity`,
/// `object.properties.relatedEntities[kind=Account].properties`.
fn incident(value: &Value) -> Result<Payload, SentinelError> {
    let object = &value["object"];
    let source_id = str_field(object, &["name", "id"])
        .ok_or(SentinelError::MissingField("object.name"))?
        .to_owned();
    let properties = object
        .get("properties")
        .ok_or(SentinelError::MissingField("object.properties"))?;
    let entities = properties
        .get("relatedEntities")
        .and_then(Value::as_array)
        .ok_or(SentinelError::MissingField(
            "object.properties.relatedEntities",
        ))?;
    let accounts = entities
        .iter()
        .filter(|e| str_field(e, &["kind"]).is_some_and(|k| k.eq_ignore_ascii_case("account")))
        .filter_map(|e| {
            let p = e.get("properties")?;
            account(
                str_field(p, &["aadUserId"]),
                str_field(p, &["userPrincipalName"]),
                str_field(p, &["accountName"]),
                str_field(p, &["upnSuffix"]),
                str_field(p, &["aadTenantId"]),
            )
        })
        .collect();
    Ok(Payload {
        kind: "incident",
        source_id,
        severity: str_field(properties, &["severity"])
            .map_or(RiskLevel::Unknown, RiskLevel::parse_lenient),
        detected_at: timestamp(properties, &["createdTimeUtc", "firstActivityTimeUtc"]),
        accounts,
    })
}

fn account(
    id: Option<&str>,
    upn: Option<&str>,
    name: Option<&str>,
    suffix: Option<&str>,
    tenant: Option<&str>,
) -> Option<Account> {
    let upn = upn.map(str::to_owned).or_else(|| match (name, suffix) {
        (Some(name), Some(suffix)) if !name.contains('@') => Some(format!("{name}@{suffix}")),
        (Some(name), _) if name.contains('@') => Some(name.to_owned()),
        _ => None,
    });
    let id = id.map(|s| s.to_ascii_lowercase());
    if id.is_none() && upn.is_none() {
        return None;
    }
    Some(Account {
        id,
        upn: upn.map(|u| u.to_ascii_lowercase()),
        tenant: tenant.map(str::to_owned),
    })
}
