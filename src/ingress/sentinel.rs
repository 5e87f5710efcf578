//! Microsoft Sentinel payloads sent by a SOAR playbook's HTTP action: alerts (SecurityAlert
//! schema) and incidents (the incident trigger's `object` with related alerts and entities).
//! Every usable Account entity becomes a [`RiskEvent`].
//!
//! Entity shapes handled (Microsoft Sentinel entities reference): an alert's `Entities` hold
//! entities by value with a `$id`, and later mentions of the same entity as `{"$ref": "<id>"}`;
//! an entity may sit inside another one (a Defender for Endpoint process carries its `Account`
//! and `ParentProcess`, an account its `Host`), leaving only a `$ref` at the top level. An
//! account is known by `AadUserId`, by an Entra cloud SID (`S-1-12-1-a-b-c-d`, which encodes
//! the object id), or by a UPN (`Name` + `UPNSuffix`); an incident's related account entities
//! use the camelCase names (`aadUserId`, `sid`, `accountName` + `upnSuffix`).

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::Config;
use crate::event::{EventSource, Origin, RiskEvent, RiskLevel, Subject, derive_event_id};

/// Why a Sentinel payload cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SentinelError {
    /// Not JSON at all (400).
    #[error("body is not JSON: {0}")]
    NotJson(String),
    /// JSON, but not a known schema (422).
    #[error("payload is not a Sentinel alert or incident: missing field `{0}`")]
    MissingField(&'static str),
    /// A known schema without any usable account (answered 200 `no_usable_account`: Logic
    /// Apps retries no 4xx, and a retry could not do better).
    #[error("payload has no Account entity with AadUserId, an Entra SID or a UPN")]
    NoAccount,
}

/// An account of the payload that yields no event, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DroppedAccount {
    /// How the payload names it (UPN, object id, `DOMAIN\name`, SID).
    pub account: String,
    pub reason: String,
}

impl std::fmt::Display for DroppedAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.account, self.reason)
    }
}

/// Events from one payload, and the accounts dropped (unusable, tenant not allowed or unknown,
/// or a tenant the caller may not name).
#[derive(Debug, Default)]
pub struct SentinelOutcome {
    pub events: Vec<RiskEvent>,
    pub dropped: Vec<DroppedAccount>,
    /// The accounts dropped because they name a tenant the caller may not name: (account,
    /// claimed tenant), for the security log.
    pub foreign: Vec<(String, String)>,
}

/// One account named by the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Account {
    id: Option<String>,
    upn: Option<String>,
    tenant: Option<String>,
}

/// What an account entity says, before deciding whether it is usable.
#[derive(Debug, Default)]
struct AccountFields<'a> {
    aad_user_id: Option<&'a str>,
    upn: Option<&'a str>,
    name: Option<&'a str>,
    upn_suffix: Option<&'a str>,
    nt_domain: Option<&'a str>,
    sid: Option<&'a str>,
    tenant: Option<&'a str>,
}

struct Payload {
    kind: &'static str,
    source_id: String,
    severity: RiskLevel,
    detected_at: Option<OffsetDateTime>,
    accounts: Vec<Account>,
    unusable: Vec<DroppedAccount>,
    /// Stable facts the write-back needs (incident ARM id and numbers), kept with the event.
    context: Option<Value>,
}

/// Parses a playbook payload into events for the allowed tenants that `origin` (the
/// authenticated caller) may name; without an origin (an operator's replay), for every allowed
/// tenant. An account whose tenant is neither named nor implied (the caller may name exactly
/// one tenant) is dropped, and so is one of a tenant the caller may not name.
pub fn parse(
    body: &[u8],
    config: &Config,
    origin: Option<&Origin>,
) -> Result<SentinelOutcome, SentinelError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| SentinelError::NotJson(e.to_string()))?;
    let is_incident = value
        .get("object")
        .and_then(Value::as_object)
        .is_some_and(|o| {
            ["name", "id", "properties"]
                .iter()
                .any(|k| o.contains_key(*k))
        });
    let payload = if is_incident {
        incident(&value)?
    } else {
        alert(&value)?
    };
    if payload.accounts.is_empty() && payload.unusable.is_empty() {
        return Err(SentinelError::NoAccount);
    }
    // The tenants the caller may name, of those allowed here.
    let scope: Vec<String> = match origin {
        Some(origin) => config
            .allowed_tenants
            .iter()
            .filter(|t| origin.covers(t))
            .cloned()
            .collect(),
        None => config.allowed_tenants.clone(),
    };
    let default_tenant = match scope.as_slice() {
        [only] => Some(only.clone()),
        _ => None,
    };
    let mut outcome = SentinelOutcome {
        dropped: payload.unusable,
        ..SentinelOutcome::default()
    };
    let mut seen: Vec<(String, Subject)> = Vec::new();
    for account in payload.accounts {
        let named = account
            .upn
            .clone()
            .or(account.id.clone())
            .unwrap_or_default();
        let Some(tenant) = account
            .tenant
            .map(|t| t.to_ascii_lowercase())
            .or_else(|| default_tenant.clone())
        else {
            outcome.dropped.push(DroppedAccount {
                account: named,
                reason: "account has no AadTenantId and the caller may name more than one tenant (or none)".into(),
            });
            continue;
        };
        if !config.tenant_allowed(&tenant) {
            outcome.dropped.push(DroppedAccount {
                account: named,
                reason: format!("tenant {tenant} is not allowed"),
            });
            continue;
        }
        if !scope.contains(&tenant) {
            outcome.foreign.push((named.clone(), tenant.clone()));
            outcome.dropped.push(DroppedAccount {
                account: named,
                reason: format!(
                    "tenant {tenant} is not one this caller may name (its credential is bound to {})",
                    if scope.is_empty() {
                        "no tenant".to_owned()
                    } else {
                        scope.join(", ")
                    }
                ),
            });
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
            resource_data: payload.context.clone(),
            origin: origin.cloned(),
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
/// string the Log Analytics table stores). Once `SystemAlertId` identifies the schema, missing,
/// null, empty or unreadable `Entities` mean no account (answered 200, not an error that Logic
/// Apps would mark as a failed run).
fn alert(value: &Value) -> Result<Payload, SentinelError> {
    let source_id = str_field(value, &["SystemAlertId"])
        .ok_or(SentinelError::MissingField("SystemAlertId"))?
        .to_owned();
    let parsed;
    let entities: &[Value] = match value.get("Entities") {
        Some(Value::String(text)) => {
            parsed = serde_json::from_str::<Value>(text).unwrap_or(Value::Null);
            parsed.as_array().map_or(&[], Vec::as_slice)
        }
        Some(Value::Array(items)) => items,
        _ => &[],
    };
    let (accounts, unusable) =
        usable(alert_accounts(entities).into_iter().map(|e| AccountFields {
            aad_user_id: str_field(e, &["AadUserId"]),
            upn: str_field(e, &["UserPrincipalName", "Upn"]),
            name: str_field(e, &["Name"]),
            upn_suffix: str_field(e, &["UPNSuffix", "UpnSuffix"]),
            nt_domain: str_field(e, &["NTDomain"]),
            sid: str_field(e, &["Sid"]),
            tenant: str_field(e, &["AadTenantId"]),
        }));
    Ok(Payload {
        kind: "alert",
        source_id,
        severity: str_field(value, &["Severity", "AlertSeverity"])
            .map_or(RiskLevel::Unknown, RiskLevel::parse_lenient),
        detected_at: timestamp(value, &["StartTimeUtc", "StartTime", "TimeGenerated"]),
        accounts,
        unusable,
        context: None,
    })
}

/// Incident trigger body: `object.name`, `object.properties.severity`,
/// `object.properties.relatedEntities[kind=Account].properties`.
fn incident(value: &Value) -> Result<Payload, SentinelError> {
    let object = &value["object"];
    let no_properties = Value::Null;
    let properties = object.get("properties").unwrap_or(&no_properties);
    let number = properties
        .get("incidentNumber")
        .filter(|n| n.is_number())
        .map(ToString::to_string);
    let source_id = str_field(object, &["name", "id"])
        .map(str::to_owned)
        .or(number)
        .ok_or(SentinelError::MissingField("object.name"))?;
    // The schema is identified: missing, null or non-array entities mean no account.
    let entities: &[Value] = properties
        .get("relatedEntities")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    let accounts = entities
        .iter()
        .filter(|e| str_field(e, &["kind"]).is_some_and(|k| k.eq_ignore_ascii_case("account")))
        .filter_map(|e| e.get("properties"))
        .map(|p| AccountFields {
            aad_user_id: str_field(p, &["aadUserId"]),
            upn: str_field(p, &["userPrincipalName"]),
            name: str_field(p, &["accountName"]),
            upn_suffix: str_field(p, &["upnSuffix"]),
            nt_domain: str_field(p, &["ntDomain"]),
            sid: str_field(p, &["sid"]),
            tenant: str_field(p, &["aadTenantId"]),
        });
    let (accounts, unusable) = usable(accounts);
    // What the write-back of an outcome needs: the ARM id (Azure portal) and, for workspaces in
    // the Defender portal, the provider incident id. Stable for the life of the incident.
    let context = serde_json::json!({
        "incidentArmId": str_field(object, &["id"]),
        "incidentNumber": properties.get("incidentNumber"),
        "providerName": str_field(properties, &["providerName"]),
        "providerIncidentId": str_field(properties, &["providerIncidentId"]),
    });
    Ok(Payload {
        kind: "incident",
        source_id,
        severity: str_field(properties, &["severity"])
            .map_or(RiskLevel::Unknown, RiskLevel::parse_lenient),
        detected_at: timestamp(properties, &["createdTimeUtc", "firstActivityTimeUtc"]),
        accounts,
        unusable,
        context: Some(context),
    })
}

/// The account entities of an alert's `Entities`, wherever they sit (top level, or inside a
/// process, logon session, mailbox...), each once: a `{"$ref": id}` is resolved to the entity
/// defined with that `$id`, and an entity seen again (by reference or repeated inline with its
/// `$id`) is not counted twice.
fn alert_accounts(entities: &[Value]) -> Vec<&Value> {
    let mut definitions: std::collections::HashMap<&str, &Value> = Default::default();
    for entity in entities {
        collect_definitions(entity, &mut definitions, 0);
    }
    let mut seen: std::collections::HashSet<&str> = Default::default();
    let mut accounts = Vec::new();
    for entity in entities {
        collect_accounts(entity, &definitions, &mut seen, &mut accounts, 0);
    }
    accounts
}

/// Deepest nesting of entities followed (Sentinel's own entities are a few levels deep).
const MAX_ENTITY_DEPTH: usize = 16;

fn is_reference(value: &Value) -> Option<&str> {
    let object = value.as_object()?;
    let reference = object.get("$ref")?.as_str()?;
    (object.len() == 1).then_some(reference)
}

fn collect_definitions<'a>(
    value: &'a Value,
    definitions: &mut std::collections::HashMap<&'a str, &'a Value>,
    depth: usize,
) {
    if depth > MAX_ENTITY_DEPTH {
        return;
    }
    match value {
        Value::Object(object) => {
            if let Some(id) = object.get("$id").and_then(Value::as_str) {
                definitions.entry(id).or_insert(value);
            }
            for child in object.values() {
                collect_definitions(child, definitions, depth + 1);
            }
        }
        Value::Array(items) => {
            for child in items {
                collect_definitions(child, definitions, depth + 1);
            }
        }
        _ => {}
    }
}

fn collect_accounts<'a>(
    value: &'a Value,
    definitions: &std::collections::HashMap<&'a str, &'a Value>,
    seen: &mut std::collections::HashSet<&'a str>,
    accounts: &mut Vec<&'a Value>,
    depth: usize,
) {
    if depth > MAX_ENTITY_DEPTH {
        return;
    }
    let resolved = match is_reference(value) {
        Some(reference) => match definitions.get(reference) {
            Some(definition) => *definition,
            None => return,
        },
        None => value,
    };
    match resolved {
        Value::Object(object) => {
            if let Some(id) = object.get("$id").and_then(Value::as_str)
                && !seen.insert(id)
            {
                return;
            }
            let is_account = str_field(resolved, &["Type", "type"])
                .is_some_and(|t| t.eq_ignore_ascii_case("account"));
            if is_account {
                accounts.push(resolved);
            }
            for child in object.values() {
                collect_accounts(child, definitions, seen, accounts, depth + 1);
            }
        }
        Value::Array(items) => {
            for child in items {
                collect_accounts(child, definitions, seen, accounts, depth + 1);
            }
        }
        _ => {}
    }
}

/// The object id an Entra cloud SID encodes: `S-1-12-1-a-b-c-d`, where the four 32-bit
/// integers, little-endian, are the 16 bytes of the object id's GUID (in the byte order of
/// .NET's `Guid.ToByteArray`). `None` for any other SID (on-premises `S-1-5-21-...`, built-in).
pub fn entra_object_id_from_sid(sid: &str) -> Option<String> {
    let rest = sid.trim();
    let rest = rest
        .get(..9)
        .filter(|p| p.eq_ignore_ascii_case("S-1-12-1-"))
        .map(|_| &rest[9..])?;
    // ASCII digits only: `u32::from_str` would also take a leading `+`.
    let parts: Vec<u32> = rest
        .split('-')
        .map(|p| {
            (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse::<u32>().ok())
                .flatten()
        })
        .collect::<Option<_>>()?;
    let [a, b, c, d] = parts.as_slice() else {
        return None;
    };
    let mut bytes = [0u8; 16];
    for (i, part) in [a, b, c, d].into_iter().enumerate() {
        bytes[i * 4..i * 4 + 4].copy_from_slice(&part.to_le_bytes());
    }
    Some(uuid::Uuid::from_bytes_le(bytes).to_string())
}

/// Splits account entities into usable accounts and the ones that name no Entra user.
fn usable<'a>(
    entities: impl Iterator<Item = AccountFields<'a>>,
) -> (Vec<Account>, Vec<DroppedAccount>) {
    let mut accounts = Vec::new();
    let mut unusable = Vec::new();
    for fields in entities {
        match account(&fields) {
            Ok(account) => accounts.push(account),
            Err(reason) => unusable.push(DroppedAccount {
                account: clip(&describe(&fields)),
                reason,
            }),
        }
    }
    (accounts, unusable)
}

/// Longest account name echoed in an answer (characters).
const MAX_ACCOUNT_ECHO: usize = 200;

fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_ACCOUNT_ECHO) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

fn describe(fields: &AccountFields<'_>) -> String {
    match (fields.nt_domain, fields.name, fields.sid) {
        (Some(domain), Some(name), _) => format!("{domain}\\{name}"),
        (None, Some(name), _) => name.to_owned(),
        (_, None, Some(sid)) => sid.to_owned(),
        _ => match (fields.upn, fields.aad_user_id) {
            (Some(upn), _) => upn.to_owned(),
            (None, Some(id)) => id.to_owned(),
            _ => "(unnamed account)".into(),
        },
    }
}

/// The account an entity names, or why it names no Entra user. An `AadUserId` that is not a
/// GUID makes the whole entity unusable: Entra object ids are GUIDs, and an entity that gets
/// this wrong is not trusted for its other fields either.
fn account(fields: &AccountFields<'_>) -> Result<Account, String> {
    let (name, suffix) = (fields.name, fields.upn_suffix);
    let upn = fields
        .upn
        .map(str::to_owned)
        .or_else(|| match (name, suffix) {
            (Some(name), Some(suffix)) if !name.contains('@') => Some(format!("{name}@{suffix}")),
            (Some(name), _) if name.contains('@') => Some(name.to_owned()),
            _ => None,
        });
    let id = match fields.aad_user_id {
        Some(raw) => match uuid::Uuid::try_parse(raw) {
            Ok(id) => Some(id.hyphenated().to_string()),
            Err(_) => return Err("AadUserId is not a GUID (an Entra object id)".into()),
        },
        None => fields.sid.and_then(entra_object_id_from_sid),
    };
    if id.is_none() && upn.is_none() {
        return Err(
            "names no Entra user: no AadUserId, Entra cloud SID (S-1-12-1-...) or UPN".into(),
        );
    }
    Ok(Account {
        id,
        upn: upn.map(|u| u.to_ascii_lowercase()),
        tenant: fields.tenant.map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entra_cloud_sids_decode_to_the_object_id() {
        // Published pair (Object ID <-> SID conversion, as Intune and Entra join use it).
        assert_eq!(
            entra_object_id_from_sid("S-1-12-1-4163729839-1217663608-249102764-4166813488")
                .as_deref(),
            Some("f82d79af-1278-4894-ac01-d90e30875cf8")
        );
        assert_eq!(
            entra_object_id_from_sid("s-1-12-1-1853585038-1209010146-1598577028-83032196")
                .as_deref(),
            Some("6e7b768e-07e2-4810-8459-485f84f8f204")
        );
        for other in [
            "S-1-5-21-3180365339-800773672-3767752645-1105",
            "S-1-12-1-1-2-3",
            "S-1-12-1-1-2-3-4-5",
            "S-1-12-1-4294967296-1-2-3",
            "S-1-12-1--1-2-3",
            "S-1-12-1-+1853585038-1209010146-1598577028-83032196",
            "S-1-12-1-1853585038-+1209010146-1598577028-83032196",
            "S-1-5-18",
            "",
        ] {
            assert_eq!(entra_object_id_from_sid(other), None, "{other}");
        }
    }

    #[test]
    fn references_nested_accounts_and_repeats_count_once() {
        let entities: Vec<Value> = serde_json::from_str(
            r#"[
              {"$id":"2","HostName":"h","Type":"host"},
              {"$id":"3","Type":"process","Account":{"$id":"4","Name":"a","UPNSuffix":"c.com","Type":"account"},
               "ParentProcess":{"$id":"5","Type":"process","Account":{"$ref":"4"}}},
              {"$ref":"4"},
              {"$ref":"99"},
              {"$id":"6","Name":"b","UPNSuffix":"c.com","Type":"account","Host":{"$ref":"2"}},
              {"$id":"6","Name":"b","UPNSuffix":"c.com","Type":"account"}
            ]"#,
        )
        .unwrap();
        let names: Vec<&str> = alert_accounts(&entities)
            .iter()
            .filter_map(|e| e["Name"].as_str())
            .collect();
        assert_eq!(names, ["a", "b"]);
    }
}
