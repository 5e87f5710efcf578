//! The simulated tenant's state: users, risk records, sign-ins, groups and roles, mailboxes,
//! subscriptions and incidents, the throttle windows, and the record of every call.

use std::collections::HashMap;
use std::time::Instant;

use serde_json::Value;

use crate::faults::Faults;
use crate::throttling::{Budget, Latency, Limits, Windows};

/// A certificate credential the token endpoint accepts.
pub struct CertificateCredential {
    pub public_key_pem: Vec<u8>,
    /// Base64url SHA-256 thumbprint of the certificate's DER (`x5t#S256`).
    pub thumbprint_sha256_b64url: String,
}

/// The simulated tenant: what it holds, and what was done to it (for tests to check).
#[derive(Default)]
pub struct Directory {
    pub users: Vec<Value>,
    pub managers: HashMap<String, String>,
    pub risky_users: HashMap<String, Value>,
    pub sign_ins: Vec<Value>,
    /// userId -> ids of the groups and directory roles it is a (transitive) member of.
    pub member_of: HashMap<String, Vec<String>>,
    /// userId -> `userRegistrationDetails` (authentication-method registration).
    pub registrations: HashMap<String, Value>,
    /// Conditional Access policies.
    pub ca_policies: Vec<Value>,
    /// roleTemplateId -> id of the tenant's activated directory role.
    pub directory_roles: HashMap<String, String>,
    pub mails: Vec<(String, Value)>,
    /// Requests (and `$batch` members) being answered now, and the most at once so far:
    /// tests prove concurrency by this overlap, never by elapsed time.
    pub in_flight: usize,
    pub peak_in_flight: usize,
    /// The most sendMail requests in flight at once, per app and mailbox ("app|mailbox").
    pub mail_peak: HashMap<String, usize>,
    /// The tenant of every authenticated Graph call (its token's), with when it arrived.
    pub tenant_calls: Vec<(String, Instant)>,
    /// Every Graph call as "METHOD /path?query", with when it arrived.
    pub calls: Vec<(String, Instant)>,
    pub token_requests: usize,
    /// Passwords set through `PATCH /users/{id}` (a `passwordProfile`).
    pub password_resets: usize,
    /// Each `PATCH /users/{id}` Graph accepted: the user and the properties its body set
    /// (names only, never values: no password is kept here).
    pub user_patches: Vec<(String, Vec<String>)>,
    /// Access tokens issued, and the tenant each is for.
    pub issued: HashMap<String, String>,
    /// Access tokens issued, and the application (client id) each is for: Graph's limits are
    /// kept per app and tenant, per tenant for all apps, or per app and mailbox.
    pub token_apps: HashMap<String, String>,
    /// Other applications the token endpoint knows (client id -> client secret), besides
    /// [`CLIENT_ID`]: the tenant's other apps, which share its Identity Protection budget.
    pub apps: HashMap<String, String>,
    /// Users whose sessions were revoked (`revokeSignInSessions` answered 200).
    pub revoked: Vec<String>,
    /// Every `$batch` that passed validation, as its members ("METHOD url"), in order.
    pub batches: Vec<Vec<String>>,
    /// How long each request takes (a sendMail holds its mailbox's concurrency slot this
    /// long); [`Latency::INSTANT`] unless set.
    pub latency: Latency,
    /// Requests of the tenant's other applications that Graph admitted (see
    /// [`GraphSimulator::other_app_request`]).
    pub other_apps_admitted: usize,
    /// Groups of the tenant (ids); any id in `member_of` that is not a directory role is a
    /// group too.
    pub groups: Vec<String>,
    /// PIM: (principalId, roleDefinitionId) of role eligibilities (`roleEligibilitySchedules`).
    pub role_eligibilities: Vec<(String, String)>,
    /// (principalId, roleDefinitionId) of active role assignments besides the members of the
    /// activated roles in `directory_roles` (e.g. a role-assignable group holding a role).
    pub role_assignments: Vec<(String, String)>,
    /// PIM for Groups: (groupId, principalId, accessId `member` or `owner`) of eligibilities
    /// (`privilegedAccess/group/eligibilitySchedules`).
    pub group_eligibilities: Vec<(String, String, String)>,
    /// Whether our application's service principal holds Privileged Authentication
    /// Administrator (or Global Administrator). Without it (the setup's User Administrator
    /// only), Graph refuses to change the password or sign-in of a user who holds any
    /// directory role: 403 `Authorization_RequestDenied`.
    pub app_is_privileged_auth_admin: bool,
    pub faults: Faults,
    pub certificate: Option<CertificateCredential>,
    pub page_size: usize,
    pub subscriptions: Vec<Value>,
    pub reauthorized: Vec<String>,
    /// The throttle limits enforced.
    pub limits: Limits,
    pub windows: Windows,
    /// Requests answered 429, per budget.
    pub throttled: HashMap<Budget, usize>,
    /// Requests admitted, per budget (members of a `$batch` count one each).
    pub admitted: HashMap<Budget, usize>,
    /// Directory resource units admitted, of every application ([`resource_units`]).
    pub resource_units: usize,
    /// HTTP requests received on `/v1.0` (a `$batch` counts once).
    pub http_requests: usize,
    /// sendMail requests being served per app and mailbox (`{tenant}|{app}|{mailbox}`), across every
    /// request and `$batch` (Outlook's concurrency limit).
    pub mail_in_flight: HashMap<String, usize>,
    /// Microsoft Sentinel: incidents and their comments (ARM), Defender incidents (Graph).
    pub sentinel: crate::security::Sentinel,
    /// Several tenants in one stand-in: the tenant each user belongs to (by object id). A
    /// listing of users, risky users or sign-ins answers only the caller's tenant's (the
    /// token's), as each tenant is its own directory in Graph. Empty: one tenant.
    pub tenant_of: HashMap<String, String>,
    /// The tenant of the request being served (set by the gate from its token).
    pub caller_tenant: String,
}

impl Directory {
    /// Whether the object `id` is in the caller's tenant (always, with one tenant).
    pub fn in_caller_tenant(&self, id: &str) -> bool {
        self.tenant_of
            .get(id)
            .is_none_or(|tenant| *tenant == self.caller_tenant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_several_tenants_a_caller_sees_only_its_own_tenants_objects() {
        let mut dir = Directory::default();
        assert!(
            dir.in_caller_tenant("u-1"),
            "one tenant: everything is the caller's"
        );
        dir.tenant_of.insert("u-a".into(), "tenant-a".into());
        dir.tenant_of.insert("u-b".into(), "tenant-b".into());
        dir.caller_tenant = "tenant-a".into();
        assert!(dir.in_caller_tenant("u-a"));
        assert!(!dir.in_caller_tenant("u-b"));
    }
}
