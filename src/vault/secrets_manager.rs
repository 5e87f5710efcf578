//! AWS Secrets Manager: each function's part of the secrets (read with `GetSecretValue`
//! only, cached, the last good value served for a grace period), and temporary passwords (one
//! secret per case, tagged with its expiry and swept).

use std::sync::Arc;

use async_trait::async_trait;

use super::{PasswordVault, SecretStore};
use crate::config::DEFAULT_SECRETS_GRACE;
use crate::support::aws::aws_error;
use crate::support::cache::{CacheError, CachePolicy, Fetch, RefreshCache};
use crate::support::secret::{SecretDocument, SecretString, SecretsError};

/// One part of the secrets from its own AWS Secrets Manager secret (JSON), cached in-process.
/// Only `secretsmanager:GetSecretValue` is called: once per TTL, one call at a time whatever
/// the number of concurrent requests. If a refresh fails, the last good value is served for
/// the grace period and the AWS error code and message are logged. The parsed form is kept per
/// `VersionId`, so an unchanged secret is not parsed again.
pub struct SecretsManagerStore<T> {
    cache: RefreshCache<T>,
    secret_id: String,
}

/// How long a caller holding a usable stale value waits for the refresh before it is served
/// the stale value.
const SECRETS_STALE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
/// After a failed read, Secrets Manager is not asked again for this long (or the TTL, if
/// shorter).
const SECRETS_RETRY_AFTER_FAILURE: std::time::Duration = std::time::Duration::from_secs(10);
/// One read of the secret; longer counts as a failure.
const SECRETS_FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a request without any usable value waits for the read.
const SECRETS_LOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

struct SecretsManagerFetch<T> {
    client: aws_sdk_secretsmanager::Client,
    secret_id: String,
    /// The last parsed value and its `VersionId`.
    parsed: std::sync::Mutex<Option<(String, Arc<T>)>>,
}

#[async_trait]
impl<T: SecretDocument> Fetch<T> for SecretsManagerFetch<T> {
    async fn fetch(&self) -> Result<Arc<T>, String> {
        let output = self
            .client
            .get_secret_value()
            .secret_id(&self.secret_id)
            .send()
            .await
            .map_err(|e| format!("GetSecretValue {}: {}", self.secret_id, sdk_error(&e)))?;
        let version = output.version_id().unwrap_or_default().to_owned();
        {
            let parsed = self.parsed.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((known, secrets)) = parsed.as_ref()
                && *known == version
                && !version.is_empty()
            {
                return Ok(secrets.clone());
            }
        }
        let json = output.secret_string().ok_or_else(|| {
            format!(
                "secret {} has no SecretString (binary secrets are not supported)",
                self.secret_id
            )
        })?;
        let secrets = Arc::new(
            T::from_json(json)
                .map_err(|e| format!("secret {} ({}): {e}", self.secret_id, T::PART))?,
        );
        *self.parsed.lock().unwrap_or_else(|e| e.into_inner()) = Some((version, secrets.clone()));
        Ok(secrets)
    }
}

impl<T: SecretDocument> SecretsManagerStore<T> {
    /// A store over `secret_id`, read again after `ttl`; the last good value is served for
    /// [`DEFAULT_SECRETS_GRACE`] beyond the TTL when Secrets Manager cannot be read.
    pub fn new(
        client: aws_sdk_secretsmanager::Client,
        secret_id: impl Into<String>,
        ttl: std::time::Duration,
    ) -> Self {
        Self::with_grace(client, secret_id, ttl, DEFAULT_SECRETS_GRACE)
    }

    /// As [`SecretsManagerStore::new`] with another grace period.
    pub fn with_grace(
        client: aws_sdk_secretsmanager::Client,
        secret_id: impl Into<String>,
        ttl: std::time::Duration,
        grace: std::time::Duration,
    ) -> Self {
        let secret_id = secret_id.into();
        let fetch = SecretsManagerFetch {
            client,
            secret_id: secret_id.clone(),
            parsed: std::sync::Mutex::new(None),
        };
        let policy = CachePolicy {
            fresh_for: ttl,
            usable_for: ttl + grace,
            retry_after_failure: SECRETS_RETRY_AFTER_FAILURE.min(ttl),
            stale_wait: SECRETS_STALE_WAIT,
            fetch_timeout: SECRETS_FETCH_TIMEOUT,
        };
        Self {
            cache: RefreshCache::new(T::PART, fetch, policy),
            secret_id,
        }
    }
}

#[async_trait]
impl<T: SecretDocument> SecretStore<T> for SecretsManagerStore<T> {
    async fn load(&self) -> Result<Arc<T>, SecretsError> {
        let deadline = tokio::time::Instant::now() + SECRETS_LOAD_WAIT;
        self.cache.get(deadline).await.map_err(|e| match e {
            CacheError::Failed(message) => SecretsError::Unavailable(message),
            CacheError::TimedOut => SecretsError::Unavailable(format!(
                "GetSecretValue {} did not answer within {} s",
                self.secret_id,
                SECRETS_LOAD_WAIT.as_secs()
            )),
        })
    }
}

/// An AWS SDK error as `Code: message` for service errors (e.g. `AccessDeniedException: User
/// ... is not authorized to perform: secretsmanager:GetSecretValue ...`); an error answer
/// whose code cannot be read is given with its HTTP status; anything else as its error chain
/// (connection refused, timeout). AWS error messages never carry secret values.
pub fn sdk_error<E>(
    error: &aws_sdk_secretsmanager::error::SdkError<
        E,
        aws_sdk_secretsmanager::config::http::HttpResponse,
    >,
) -> String
where
    E: std::error::Error + aws_sdk_secretsmanager::error::ProvideErrorMetadata + 'static,
{
    if let Some(service) = error.as_service_error()
        && let Some(code) = service.code()
    {
        return format!("{code}: {}", service.message().unwrap_or("(no message)"));
    }
    match error.raw_response() {
        Some(raw) => format!(
            "HTTP {} with an unreadable error body: {}",
            raw.status().as_u16(),
            aws_error(error)
        ),
        None => aws_error(error),
    }
}

/// Tag holding the RFC 3339 time after which a temporary-password secret is deleted.
pub const EXPIRES_AT_TAG: &str = "risk-responder:expires-at";

/// Temporary passwords as Secrets Manager secrets, tagged with their expiry.
pub struct SecretsManagerPasswordVault {
    client: aws_sdk_secretsmanager::Client,
}

impl SecretsManagerPasswordVault {
    /// A vault over a Secrets Manager client.
    pub fn new(client: aws_sdk_secretsmanager::Client) -> Self {
        Self { client }
    }

    /// Deletes (without recovery) temporary-password secrets under `prefix` whose expiry has
    /// passed. Returns how many were deleted.
    pub async fn sweep_expired(&self, prefix: &str) -> Result<usize, String> {
        use aws_sdk_secretsmanager::types::{Filter, FilterNameStringType};
        let now = time::OffsetDateTime::now_utc();
        let mut deleted = 0;
        let mut pages = self
            .client
            .list_secrets()
            .filters(
                Filter::builder()
                    .key(FilterNameStringType::Name)
                    .values(prefix)
                    .build(),
            )
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws_error(&e))?;
            for secret in page.secret_list() {
                if !secret.name().unwrap_or_default().starts_with(prefix) {
                    continue;
                }
                let expired = secret
                    .tags()
                    .iter()
                    .find(|t| t.key() == Some(EXPIRES_AT_TAG))
                    .and_then(|t| t.value())
                    .and_then(|v| {
                        time::OffsetDateTime::parse(
                            v,
                            &time::format_description::well_known::Rfc3339,
                        )
                        .ok()
                    })
                    .is_some_and(|at| at <= now);
                if expired {
                    self.client
                        .delete_secret()
                        .secret_id(secret.arn().or(secret.name()).unwrap_or_default())
                        .force_delete_without_recovery(true)
                        .send()
                        .await
                        .map_err(|e| aws_error(&e))?;
                    deleted += 1;
                }
            }
        }
        Ok(deleted)
    }
}

#[async_trait]
impl PasswordVault for SecretsManagerPasswordVault {
    async fn store(
        &self,
        name: &str,
        password: &SecretString,
        ttl_hours: u32,
    ) -> Result<String, String> {
        use aws_sdk_secretsmanager::types::Tag;
        let expires = time::OffsetDateTime::now_utc() + time::Duration::hours(i64::from(ttl_hours));
        let expires = expires
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|e| e.to_string())?;
        let tag = Tag::builder().key(EXPIRES_AT_TAG).value(&expires).build();
        let created = self
            .client
            .create_secret()
            .name(name)
            .description("risk-responder temporary password; deleted after its expires-at tag")
            .secret_string(password.expose())
            .tags(tag.clone())
            .send()
            .await;
        match created {
            Ok(out) => Ok(out.arn().unwrap_or(name).to_owned()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_resource_exists_exception()) =>
            {
                // A retry of the same case: replace the value, push the expiry out.
                let put = self
                    .client
                    .put_secret_value()
                    .secret_id(name)
                    .secret_string(password.expose())
                    .send()
                    .await
                    .map_err(|e| aws_error(&e))?;
                self.client
                    .tag_resource()
                    .secret_id(name)
                    .tags(tag)
                    .send()
                    .await
                    .map_err(|e| aws_error(&e))?;
                Ok(put.arn().unwrap_or(name).to_owned())
            }
            Err(e) => Err(aws_error(&e)),
        }
    }
}
