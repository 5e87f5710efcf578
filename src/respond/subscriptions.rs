//! Graph change-notification subscriptions: create, list, renew before they lapse, and
//! reauthorize on `reauthorizationRequired`. Only `users` (risky users cannot be subscribed to;
//! the legacy `security/alerts` API is retired and returns no data after 2026-08-31).

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::graph::{GraphClient, GraphError};
use crate::support::secret::SecretString;

/// Most minutes a `users` subscription may last.
pub const USERS_MAX_MINUTES: u32 = 41_760;
/// Expiry is set this far inside the maximum, for clock skew.
const EXPIRY_SAFETY: Duration = Duration::from_secs(60 * 60);

/// One resource we subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceSpec {
    pub resource: String,
    pub change_type: String,
    pub max_minutes: u32,
}

impl ResourceSpec {
    /// `users`, `updated`.
    pub fn users() -> Self {
        Self {
            resource: "users".into(),
            change_type: "updated".into(),
            max_minutes: USERS_MAX_MINUTES,
        }
    }
}

/// A Graph subscription, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    pub id: String,
    pub resource: String,
    pub change_type: String,
    pub notification_url: String,
    #[serde(default)]
    pub lifecycle_notification_url: Option<String>,
    pub expiration_date_time: String,
}

/// Creates and maintains our subscriptions in each tenant.
pub struct SubscriptionManager {
    pub graph: Arc<GraphClient>,
    /// Public URL of `/graph/notifications`.
    pub notification_url: String,
    /// Public URL of `/graph/lifecycle`.
    pub lifecycle_url: String,
    pub client_state: SecretString,
    pub resources: Vec<ResourceSpec>,
    /// Where each subscription's tenant is recorded (`subscription#{tenant}#{id}`): the webhook
    /// accepts a notification only for a subscription recorded in the tenant it names.
    pub ledger: Option<crate::ledger::Ledger>,
}

fn expiry(minutes: u32) -> Result<String, GraphError> {
    let at =
        OffsetDateTime::now_utc() + Duration::from_secs(u64::from(minutes) * 60) - EXPIRY_SAFETY;
    at.replace_nanosecond(0)
        .unwrap_or(at)
        .format(&Rfc3339)
        .map_err(|e| GraphError::Config(e.to_string()))
}

impl SubscriptionManager {
    /// Our subscriptions in `tenant` (those pointing at our notification URL).
    pub async fn list(&self, tenant: &str) -> Result<Vec<Subscription>, GraphError> {
        let all = self.graph.get_all(tenant, "/subscriptions").await?;
        let ours: Vec<Subscription> = all
            .into_iter()
            .filter_map(|v| serde_json::from_value::<Subscription>(v).ok())
            .filter(|s| s.notification_url == self.notification_url)
            .collect();
        // Listed with the tenant's own token: these are the tenant's subscriptions.
        self.record(tenant, &ours).await?;
        Ok(ours)
    }

    /// Records that `subscriptions` were created in `tenant` (kept if recorded already).
    async fn record(&self, tenant: &str, subscriptions: &[Subscription]) -> Result<(), GraphError> {
        let Some(ledger) = &self.ledger else {
            return Ok(());
        };
        let ids: Vec<&str> = subscriptions.iter().map(|s| s.id.as_str()).collect();
        ledger
            .record_subscriptions(tenant, &ids)
            .await
            .map_err(|e| GraphError::RateLimiter(format!("subscription not recorded: {e}")))
    }

    /// Creates the subscriptions that are missing; returns those created.
    pub async fn ensure(&self, tenant: &str) -> Result<Vec<Subscription>, GraphError> {
        let existing = self.list(tenant).await?;
        let mut created = Vec::new();
        for spec in &self.resources {
            if existing
                .iter()
                .any(|s| s.resource.eq_ignore_ascii_case(&spec.resource))
            {
                continue;
            }
            let body = json!({
                "changeType": spec.change_type,
                "notificationUrl": self.notification_url,
                "lifecycleNotificationUrl": self.lifecycle_url,
                "resource": spec.resource,
                "expirationDateTime": expiry(spec.max_minutes)?,
                "clientState": self.client_state.expose(),
                "latestSupportedTlsVersion": "v1_2",
            });
            let value = self
                .graph
                .send(tenant, Method::POST, "/subscriptions", Some(&body))
                .await?;
            let subscription: Subscription =
                serde_json::from_value(value).map_err(|e| GraphError::Decode(e.to_string()))?;
            tracing::info!(tenant_id = tenant, subscription_id = %subscription.id, resource = %subscription.resource, "subscription created");
            self.record(tenant, std::slice::from_ref(&subscription))
                .await?;
            created.push(subscription);
        }
        Ok(created)
    }

    /// Extends subscriptions that expire within `within` to their maximum; returns how many.
    pub async fn renew(&self, tenant: &str, within: Duration) -> Result<usize, GraphError> {
        let horizon = OffsetDateTime::now_utc() + within;
        let mut renewed = 0;
        for subscription in self.list(tenant).await? {
            let expires = OffsetDateTime::parse(&subscription.expiration_date_time, &Rfc3339)
                .map_err(|e| GraphError::Decode(e.to_string()))?;
            if expires > horizon {
                continue;
            }
            let max = self
                .resources
                .iter()
                .find(|r| r.resource.eq_ignore_ascii_case(&subscription.resource))
                .map_or(USERS_MAX_MINUTES, |r| r.max_minutes);
            let body = json!({ "expirationDateTime": expiry(max)? });
            let path = format!("/subscriptions/{}", subscription.id);
            self.graph
                .send(tenant, Method::PATCH, &path, Some(&body))
                .await?;
            tracing::info!(tenant_id = tenant, subscription_id = %subscription.id, "subscription renewed");
            renewed += 1;
        }
        Ok(renewed)
    }

    /// `POST /subscriptions/{id}/reauthorize`, after a `reauthorizationRequired` notice.
    pub async fn reauthorize(&self, tenant: &str, subscription_id: &str) -> Result<(), GraphError> {
        let ok = subscription_id.len() <= 64
            && subscription_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !ok {
            return Err(GraphError::Config("subscription id is not a GUID".into()));
        }
        let path = format!("/subscriptions/{subscription_id}/reauthorize");
        self.graph.send(tenant, Method::POST, &path, None).await?;
        tracing::info!(
            tenant_id = tenant,
            subscription_id,
            "subscription reauthorized"
        );
        Ok(())
    }
}
