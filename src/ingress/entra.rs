//! Entra ID access tokens presented by Sentinel playbooks: a Logic App's HTTP action with
//! Managed Identity authentication sends `Authorization: Bearer <token>` for the audience it is
//! given. The token must be RS256-signed by the Microsoft identity platform (the key set shared
//! with Graph validation tokens), addressed to our application ID URI or client id, issued (v1
//! or v2) by an allowed tenant, current, app-only (never a user's delegated token), and name a
//! caller on the allow-list: a managed identity by `oid`, an application by `appid` (v1) or
//! `azp` (v2).
//!
//! App-only, as the Microsoft identity platform documents it ("Secure applications and APIs by
//! validating claims", access token claims reference): a token that carries `scp` is
//! delegated; `idtyp`, when present, is `app` for an app-only token (always present in v2
//! tokens of managed identities, optional in v1); without `idtyp`, an app-only token has no
//! `scp` and its `oid` equals its `sub` (the service principal is both subject and object).

use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use super::jwks::{JwksCache, TokenError};

/// Who may call: managed identities by object id, applications by application (client) id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerAllowList {
    /// Object ids (`oid`) of managed identities (or any service principal) allowed to call.
    #[serde(default)]
    pub object_ids: Vec<String>,
    /// Application ids (`appid`/`azp`) of applications allowed to call.
    #[serde(default)]
    pub app_ids: Vec<String>,
    /// Tenants a caller may name besides its token's own (`tid`), by the caller's object id or
    /// application id: a playbook of one tenant that responds for another.
    #[serde(default)]
    pub tenants: std::collections::BTreeMap<String, Vec<String>>,
}

impl CallerAllowList {
    /// Lower-cases the ids and checks they are GUIDs; an error names the list and position.
    pub fn normalised(mut self) -> Result<Self, String> {
        for (list, ids) in [
            ("object_ids", &mut self.object_ids),
            ("app_ids", &mut self.app_ids),
        ] {
            for (position, id) in ids.iter_mut().enumerate() {
                *id = id.trim().to_ascii_lowercase();
                if uuid::Uuid::try_parse(id).is_err() {
                    return Err(format!("sentinel_callers.{list}[{position}] is not a GUID"));
                }
            }
        }
        let mut tenants = std::collections::BTreeMap::new();
        for (caller, list) in std::mem::take(&mut self.tenants) {
            let caller = caller.trim().to_ascii_lowercase();
            if uuid::Uuid::try_parse(&caller).is_err() {
                return Err(
                    "sentinel_callers.tenants has a key that is not a GUID (an object or application id)"
                        .to_owned(),
                );
            }
            let mut ids = Vec::with_capacity(list.len());
            for (position, tenant) in list.into_iter().enumerate() {
                let tenant = tenant.trim().to_ascii_lowercase();
                if uuid::Uuid::try_parse(&tenant).is_err() {
                    return Err(format!(
                        "sentinel_callers.tenants[\"{caller}\"][{position}] is not a tenant id (GUID)"
                    ));
                }
                ids.push(tenant);
            }
            tenants.insert(caller, ids);
        }
        self.tenants = tenants;
        Ok(self)
    }

    /// The tenants `caller` may name: its token's tenant, and any listed for it.
    pub fn tenants_of(&self, caller: &Caller) -> Vec<String> {
        let mut tenants = vec![caller.tenant_id.clone()];
        for id in [&caller.object_id, &caller.app_id].into_iter().flatten() {
            for tenant in self
                .tenants
                .get(&id.to_ascii_lowercase())
                .into_iter()
                .flatten()
            {
                if !tenants.contains(tenant) {
                    tenants.push(tenant.clone());
                }
            }
        }
        tenants
    }

    /// Whether no caller is allowed at all.
    pub fn is_empty(&self) -> bool {
        self.object_ids.is_empty() && self.app_ids.is_empty()
    }

    /// Whether this caller is on the list.
    pub fn allows(&self, caller: &Caller) -> bool {
        let on = |list: &[String], id: &Option<String>| {
            id.as_deref()
                .is_some_and(|id| list.iter().any(|allowed| allowed.eq_ignore_ascii_case(id)))
        };
        on(&self.object_ids, &caller.object_id) || on(&self.app_ids, &caller.app_id)
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Until when the token is accepted (`exp` plus the leeway), unix seconds: a delivery made
    /// with it can be replayed until then.
    pub valid_until: i64,
    /// Tenant that issued the token (lower case).
    pub tenant_id: String,
    /// `oid`: the calling principal's object id.
    pub object_id: Option<String>,
    /// `appid` (v1) or `azp` (v2): the calling application's id.
    pub app_id: Option<String>,
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "oid {} appid {} tenant {}",
            self.object_id.as_deref().unwrap_or("-"),
            self.app_id.as_deref().unwrap_or("-"),
            self.tenant_id
        )
    }
}

/// Why an Entra ID token is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntraError {
    #[error("bearer token refused: {0}")]
    Token(TokenError),
    #[error("bearer token of tenant {0} refused: the tenant is not allowed")]
    Tenant(String),
    #[error("caller ({0}) is not on the allow-list of sentinel_callers")]
    NotAllowed(Caller),
    /// A user's token (delegated), even one obtained through an allow-listed application.
    #[error(
        "bearer token refused: {0}; only app-only tokens (managed identities, applications) are accepted"
    )]
    Delegated(&'static str),
}

#[derive(Debug, Deserialize)]
struct Claims {
    exp: i64,
    #[serde(flatten)]
    identity: Identity,
}

/// The claims read before the signature is checked (see [`EntraVerifier::screen`]).
#[derive(Debug, Deserialize)]
struct Unverified {
    #[serde(default)]
    aud: Option<serde_json::Value>,
    #[serde(default)]
    tid: Option<String>,
    #[serde(flatten)]
    identity: Identity,
}

/// Who the token was issued to, and whether for a user.
#[derive(Debug, Deserialize)]
struct Identity {
    #[serde(default)]
    oid: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    /// Delegated scopes: present only in tokens issued for a user.
    #[serde(default)]
    scp: Option<serde_json::Value>,
    /// `app` or `user` (v2, and v1 when the optional claim is configured).
    #[serde(default)]
    idtyp: Option<String>,
    #[serde(default)]
    appid: Option<String>,
    #[serde(default)]
    azp: Option<String>,
}

/// Verifies Entra ID access tokens addressed to this service.
pub struct EntraVerifier {
    jwks: JwksCache,
    audiences: Vec<String>,
    leeway: Duration,
}

impl EntraVerifier {
    /// Tokens must be addressed to one of `audiences` (the application ID URI, e.g.
    /// `api://<client id>`, and/or the application's client id).
    pub fn new(jwks: JwksCache, audiences: Vec<String>, leeway: Duration) -> Self {
        Self {
            jwks,
            audiences,
            leeway,
        }
    }

    /// Checks the token and returns its caller if the caller is on `callers`. Waits for signing
    /// keys until `deadline` at most; [`TokenError::KeysUnavailable`] means "retry", not "no".
    pub async fn verify(
        &self,
        token: &str,
        tenant_allowed: impl Fn(&str) -> bool,
        callers: &CallerAllowList,
        deadline: Instant,
    ) -> Result<Caller, EntraError> {
        self.screen(token, &tenant_allowed, callers)?;
        let (issuer, claims): (_, Claims) =
            super::jwks::verify(&self.jwks, token, &self.audiences, self.leeway, deadline)
                .await
                .map_err(EntraError::Token)?;
        if !tenant_allowed(&issuer.tid) {
            return Err(EntraError::Tenant(issuer.tid));
        }
        let identity = claims.identity;
        app_only(&identity)?;
        let leeway = i64::try_from(self.leeway.as_secs()).unwrap_or(i64::MAX);
        let caller = Caller {
            valid_until: claims.exp.saturating_add(leeway),
            tenant_id: issuer.tid,
            object_id: identity.oid.map(|s| s.to_ascii_lowercase()),
            app_id: identity
                .appid
                .or(identity.azp)
                .map(|s| s.to_ascii_lowercase()),
        };
        if callers.allows(&caller) {
            Ok(caller)
        } else {
            Err(EntraError::NotAllowed(caller))
        }
    }

    /// The checks that need no signing key, on the token's unverified header and claims:
    /// RS256 with a key id, an accepted audience, an allowed tenant, an app-only token, a caller
    /// on the allow-list. A token failing them could never pass [`Self::verify`], so it is
    /// refused before any key lookup: forged key ids cannot make an implausible token cause a
    /// key-set fetch or a 503. What is echoed from these claims is a GUID or nothing.
    fn screen(
        &self,
        token: &str,
        tenant_allowed: &impl Fn(&str) -> bool,
        callers: &CallerAllowList,
    ) -> Result<(), EntraError> {
        let claims: Unverified =
            super::jwks::unverified_claims(token).map_err(EntraError::Token)?;
        let addressed = claims
            .aud
            .as_ref()
            .is_some_and(|aud| super::jwks::addressed_to(aud, &self.audiences));
        if !addressed {
            return Err(EntraError::Token(TokenError::Audience));
        }
        let tenant = claims.tid.as_deref().and_then(guid);
        let tenant_id = match tenant {
            Some(tid) if tenant_allowed(&tid) => tid,
            Some(tid) => return Err(EntraError::Tenant(tid)),
            None => return Err(EntraError::Tenant("(no GUID in tid)".into())),
        };
        app_only(&claims.identity)?;
        let identity = claims.identity;
        let caller = Caller {
            valid_until: 0,
            tenant_id,
            object_id: identity.oid.as_deref().and_then(guid),
            app_id: identity.appid.or(identity.azp).as_deref().and_then(guid),
        };
        if callers.allows(&caller) {
            Ok(())
        } else {
            Err(EntraError::NotAllowed(caller))
        }
    }
}

/// `id` in lower case if it is a GUID (unverified claims are shown only in that form).
fn guid(id: &str) -> Option<String> {
    uuid::Uuid::try_parse(id)
        .ok()
        .map(|_| id.to_ascii_lowercase())
}

/// Refuses a user's (delegated) token: `scp` present, `idtyp` other than `app`, or (without
/// `idtyp`) an `oid` that is not the `sub`.
fn app_only(claims: &Identity) -> Result<(), EntraError> {
    if claims.scp.is_some() {
        return Err(EntraError::Delegated(
            "it is a user's (delegated) token: it carries scp",
        ));
    }
    match claims.idtyp.as_deref() {
        Some(kind) if kind.eq_ignore_ascii_case("app") => Ok(()),
        Some(_) => Err(EntraError::Delegated(
            "it is a user's (delegated) token: idtyp is not app",
        )),
        None => match (claims.oid.as_deref(), claims.sub.as_deref()) {
            (Some(oid), Some(sub)) if oid.eq_ignore_ascii_case(sub) => Ok(()),
            _ => Err(EntraError::Delegated(
                "it is not an app-only token: without idtyp, its oid must equal its sub",
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allow_list_matches_by_oid_or_by_app_id() {
        let list = CallerAllowList {
            object_ids: vec![" 6E7B768E-07E2-4810-8459-485F84F8F204".into()],
            app_ids: vec!["11111111-2222-3333-4444-555555555555".into()],
            tenants: Default::default(),
        }
        .normalised()
        .unwrap();
        let caller = |oid: Option<&str>, app: Option<&str>| Caller {
            valid_until: 0,
            tenant_id: "t".into(),
            object_id: oid.map(str::to_owned),
            app_id: app.map(str::to_owned),
        };
        assert!(list.allows(&caller(Some("6e7b768e-07e2-4810-8459-485f84f8f204"), None)));
        assert!(list.allows(&caller(None, Some("11111111-2222-3333-4444-555555555555"))));
        assert!(!list.allows(&caller(
            Some("11111111-2222-3333-4444-555555555555"),
            Some("6e7b768e-07e2-4810-8459-485f84f8f204")
        )));
        assert!(!list.allows(&caller(None, None)));
        let err = CallerAllowList {
            object_ids: vec!["not-a-guid".into()],
            app_ids: vec![],
            tenants: Default::default(),
        }
        .normalised()
        .unwrap_err();
        assert_eq!(err, "sentinel_callers.object_ids[0] is not a GUID");
    }

    #[test]
    fn a_caller_names_its_own_tenant_and_those_listed_for_it() {
        let list: CallerAllowList = serde_json::from_str(
            r#"{"object_ids": ["6e7b768e-07e2-4810-8459-485f84f8f204"],
                "tenants": {"6E7B768E-07E2-4810-8459-485F84F8F204": ["AAAAAAAA-0000-4000-8000-000000000001"]}}"#,
        )
        .unwrap();
        let list = list.normalised().unwrap();
        let caller = Caller {
            valid_until: 0,
            tenant_id: "bbbbbbbb-0000-4000-8000-000000000002".into(),
            object_id: Some("6e7b768e-07e2-4810-8459-485f84f8f204".into()),
            app_id: None,
        };
        assert_eq!(
            list.tenants_of(&caller),
            [
                "bbbbbbbb-0000-4000-8000-000000000002",
                "aaaaaaaa-0000-4000-8000-000000000001"
            ]
        );
        let other = Caller {
            object_id: Some("11111111-2222-3333-4444-555555555555".into()),
            ..caller
        };
        assert_eq!(
            list.tenants_of(&other),
            ["bbbbbbbb-0000-4000-8000-000000000002"]
        );
        let bad: CallerAllowList =
            serde_json::from_str(r#"{"tenants": {"6e7b768e-07e2-4810-8459-485f84f8f204": ["x"]}}"#)
                .unwrap();
        assert!(bad.normalised().unwrap_err().contains("is not a tenant id"));
    }
}
