//! Temporary-password delivery through AWS Secrets Manager: one secret per case (a retry
//! updates it rather than failing on the existing name), tagged with its expiry and swept.

use async_trait::async_trait;

use crate::secrets::{SecretString, aws_error};

/// Tag holding the RFC 3339 time after which a temporary-password secret is deleted.
pub const EXPIRES_AT_TAG: &str = "risk-responder:expires-at";

/// Port: a short-lived secret store for temporary passwords.
#[async_trait]
pub trait PasswordVault: Send + Sync {
    /// Stores `password` under `name` (creating it, or replacing the value of the case's
    /// existing secret on a retry), to be deleted after `ttl_hours`; returns its id.
    async fn store(
        &self,
        name: &str,
        password: &SecretString,
        ttl_hours: u32,
    ) -> Result<String, String>;
}

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
