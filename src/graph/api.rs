//! Typed Graph calls used by investigation and remediation.

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{GraphClient, GraphError};

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
    .add(b'}');

fn segment(value: &str) -> String {
    utf8_percent_encode(value, SEGMENT).to_string()
}

/// An Entra object id: the only thing interpolated into an OData filter.
fn object_id(value: &str) -> Result<&str, GraphError> {
    let ok = value.len() == 36 && value.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    if ok {
        Ok(value)
    } else {
        Err(GraphError::Config(format!("{value:?} is not an object id")))
    }
}

/// `GET /identityProtection/riskyUsers/{id}`.
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
    /// Whether Identity Protection still considers the user at risk.
    pub fn is_at_risk(&self) -> bool {
        self.risk_state.as_deref() == Some("atRisk")
            || self.risk_state.as_deref() == Some("confirmedCompromised")
    }
}

/// A user, as much as remediation needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: String,
    #[serde(default)]
    pub user_principal_name: Option<String>,
    #[serde(default)]
    pub account_enabled: Option<bool>,
    #[serde(default)]
    pub mail: Option<String>,
}

/// One entry of `GET /auditLogs/signIns`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignIn {
    pub id: String,
    pub created_date_time: String,
    #[serde(default)]
    pub user_principal_name: Option<String>,
    #[serde(default)]
    pub app_display_name: Option<String>,
    #[serde(default)]
    pub ip_address: Option<String>,
    pub status: SignInStatus,
}

/// `signIn.status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignInStatus {
    pub error_code: i64,
    #[serde(default)]
    pub failure_reason: Option<String>,
}

/// AADSTS53011: user blocked due to risk on home tenant.
pub const ERROR_BLOCKED_DUE_TO_RISK: i64 = 53011;

fn decode<T: for<'de> Deserialize<'de>>(value: serde_json::Value) -> Result<T, GraphError> {
    serde_json::from_value(value).map_err(|e| GraphError::Decode(e.to_string()))
}

impl GraphClient {
    /// The risky-user record; `Ok(None)` if Identity Protection has none for this user.
    pub async fn risky_user(
        &self,
        tenant: &str,
        user_id: &str,
    ) -> Result<Option<RiskyUser>, GraphError> {
        let path = format!("/identityProtection/riskyUsers/{}", segment(user_id));
        match self.send(tenant, Method::GET, &path, None).await {
            Ok(value) => decode(value).map(Some),
            Err(GraphError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A user by object id or UPN.
    pub async fn user(&self, tenant: &str, id_or_upn: &str) -> Result<User, GraphError> {
        let path = format!(
            "/users/{}?$select=id,userPrincipalName,accountEnabled,mail",
            segment(id_or_upn)
        );
        decode(self.send(tenant, Method::GET, &path, None).await?)
    }

    /// The user's manager, if any.
    pub async fn manager(&self, tenant: &str, user_id: &str) -> Result<Option<User>, GraphError> {
        let path = format!("/users/{}/manager", segment(user_id));
        match self.send(tenant, Method::GET, &path, None).await {
            Ok(value) => decode(value).map(Some),
            Err(GraphError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A legacy security alert (`security/alerts/{id}`), as JSON.
    pub async fn security_alert(
        &self,
        tenant: &str,
        alert_id: &str,
    ) -> Result<serde_json::Value, GraphError> {
        let path = format!("/security/alerts/{}", segment(alert_id));
        self.send(tenant, Method::GET, &path, None).await
    }

    /// Sign-ins of `user_id` that failed with 53011 since `since`, all pages.
    pub async fn blocked_sign_ins(
        &self,
        tenant: &str,
        user_id: &str,
        since: OffsetDateTime,
    ) -> Result<Vec<SignIn>, GraphError> {
        let since = since
            .replace_nanosecond(0)
            .unwrap_or(since)
            .format(&Rfc3339)
            .map_err(|e| GraphError::Config(e.to_string()))?;
        let filter = format!(
            "userId eq '{}' and status/errorCode eq {ERROR_BLOCKED_DUE_TO_RISK} and createdDateTime ge {since}",
            object_id(user_id)?
        );
        let path = format!(
            "/auditLogs/signIns?$filter={}&$top=100",
            utf8_percent_encode(&filter, percent_encoding::NON_ALPHANUMERIC)
        );
        self.get_all(tenant, &path)
            .await?
            .into_iter()
            .map(decode)
            .collect()
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
        password: &crate::secrets::SecretString,
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

    /// `POST /identityProtection/riskyUsers/dismiss`.
    pub async fn dismiss_risk(&self, tenant: &str, user_id: &str) -> Result<(), GraphError> {
        let body = json!({ "userIds": [user_id] });
        self.send(
            tenant,
            Method::POST,
            "/identityProtection/riskyUsers/dismiss",
            Some(&body),
        )
        .await
        .map(drop)
    }

    /// `POST /identityProtection/riskyUsers/confirmCompromised`.
    pub async fn confirm_compromised(&self, tenant: &str, user_id: &str) -> Result<(), GraphError> {
        let body = json!({ "userIds": [user_id] });
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
