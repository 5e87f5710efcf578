//! DynamoDB ledger (and webhook replay guard) for Lambda: conditional writes, TTL on
//! `expires_at`. One table, partition key `pk` (S): `event#{id}` and `webhook#{id}`.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::AttributeValue;
use time::OffsetDateTime;

use super::{Claim, Entry, Ledger, LedgerError, RECORD_RETENTION, Status, payload_hash};
use crate::event::RiskEvent;
use crate::ingress::signature::{ReplayGuard, ReplayStoreError};
use crate::pipeline::Report;
use crate::secrets::aws_error;

/// The ledger table.
#[derive(Clone)]
pub struct DynamoLedger {
    client: Client,
    table: String,
}

type Item = HashMap<String, AttributeValue>;

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

fn is_conditional_failure<E, R>(e: &SdkError<E, R>) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    e.as_service_error()
        .and_then(|se| se.code())
        .is_some_and(|c| c == "ConditionalCheckFailedException")
}

fn get_s<'a>(item: &'a Item, key: &str) -> Option<&'a str> {
    item.get(key)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

fn get_n(item: &Item, key: &str) -> i64 {
    item.get(key)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn to_entry(item: &Item) -> Option<Entry> {
    let ts = |k: &str| {
        OffsetDateTime::from_unix_timestamp(get_n(item, k)).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    };
    Some(Entry {
        event_id: get_s(item, "pk")?.strip_prefix("event#")?.to_owned(),
        tenant_id: get_s(item, "tenant_id").unwrap_or_default().to_owned(),
        status: Status::parse(get_s(item, "status")?)?,
        payload_hash: get_s(item, "payload_hash").unwrap_or_default().to_owned(),
        attempts: get_n(item, "attempts") as u32,
        received_at: ts("received_at"),
        updated_at: ts("updated_at"),
        event: get_s(item, "event").and_then(|e| serde_json::from_str(e).ok()),
        report: get_s(item, "report").and_then(|r| serde_json::from_str(r).ok()),
    })
}

impl DynamoLedger {
    /// A ledger over an existing table.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// Creates the table (on-demand, TTL on `expires_at`), as `infra/template.yaml` does.
    pub async fn create_table(&self) -> Result<(), LedgerError> {
        use aws_sdk_dynamodb::types::{
            AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
            TimeToLiveSpecification,
        };
        let build = |e: aws_sdk_dynamodb::error::BuildError| LedgerError(e.to_string());
        self.client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("pk")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(build)?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("pk")
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(build)?,
            )
            .send()
            .await
            .map_err(|e| LedgerError(aws_error(&e)))?;
        self.client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name("expires_at")
                    .enabled(true)
                    .build()
                    .map_err(build)?,
            )
            .send()
            .await
            .map_err(|e| LedgerError(aws_error(&e)))?;
        Ok(())
    }

    async fn get(&self, pk: &str) -> Result<Option<Item>, LedgerError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| LedgerError(aws_error(&e)))?;
        Ok(out.item)
    }

    async fn finish(
        &self,
        event_id: &str,
        report: &Report,
        status: Status,
    ) -> Result<(), LedgerError> {
        let json = serde_json::to_string(report).map_err(|e| LedgerError(e.to_string()))?;
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(format!("event#{event_id}")))
            .update_expression("SET #s = :s, #r = :r, lease_until = :zero, updated_at = :now")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_names("#s", "status")
            .expression_attribute_names("#r", "report")
            .expression_attribute_values(":s", s(status.as_str()))
            .expression_attribute_values(":r", s(json))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":now", n(now()))
            .send()
            .await
            .map_err(|e| LedgerError(aws_error(&e)))?;
        Ok(())
    }
}

#[async_trait]
impl Ledger for DynamoLedger {
    async fn accept(&self, event: &RiskEvent) -> Result<(), LedgerError> {
        let now = now();
        let json = serde_json::to_string(event).map_err(|e| LedgerError(e.to_string()))?;
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(format!("event#{}", event.event_id)))
            .item("tenant_id", s(&event.tenant_id))
            .item("status", s(Status::Received.as_str()))
            .item("payload_hash", s(payload_hash(event)))
            .item("attempts", n(0))
            .item("lease_until", n(0))
            .item("received_at", n(now))
            .item("updated_at", n(now))
            .item("expires_at", n(now + RECORD_RETENTION.as_secs() as i64))
            .item("event", s(json))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_conditional_failure(&e) => Ok(()),
            Err(e) => Err(LedgerError(aws_error(&e))),
        }
    }

    async fn claim(&self, event: &RiskEvent, lease: Duration) -> Result<Claim, LedgerError> {
        let now = now();
        let hash = payload_hash(event);
        let pk = format!("event#{}", event.event_id);
        let json = serde_json::to_string(event).map_err(|e| LedgerError(e.to_string()))?;
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&pk))
            .update_expression(
                "SET #s = :inprogress, lease_until = :lease, attempts = if_not_exists(attempts, :zero) + :one, \
                 updated_at = :now, tenant_id = if_not_exists(tenant_id, :tenant), \
                 payload_hash = if_not_exists(payload_hash, :hash), received_at = if_not_exists(received_at, :now), \
                 expires_at = if_not_exists(expires_at, :exp), #e = if_not_exists(#e, :event)",
            )
            .condition_expression(
                "(attribute_not_exists(pk) OR #s IN (:received, :retry) OR (#s = :inprogress AND lease_until < :now)) \
                 AND (attribute_not_exists(payload_hash) OR payload_hash = :hash)",
            )
            .expression_attribute_names("#s", "status")
            .expression_attribute_names("#e", "event")
            .expression_attribute_values(":inprogress", s(Status::InProgress.as_str()))
            .expression_attribute_values(":received", s(Status::Received.as_str()))
            .expression_attribute_values(":retry", s(Status::Retry.as_str()))
            .expression_attribute_values(":lease", n(now + lease.as_secs() as i64))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":tenant", s(&event.tenant_id))
            .expression_attribute_values(":hash", s(&hash))
            .expression_attribute_values(":exp", n(now + RECORD_RETENTION.as_secs() as i64))
            .expression_attribute_values(":event", s(json))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await;
        match result {
            Ok(out) => {
                let previous = out
                    .attributes
                    .as_ref()
                    .and_then(|old| get_s(old, "report"))
                    .and_then(|r| serde_json::from_str(r).ok())
                    .map(Box::new);
                Ok(Claim::Acquired { previous })
            }
            Err(e) if is_conditional_failure(&e) => {
                let Some(item) = self.get(&pk).await? else {
                    return Ok(Claim::InProgress);
                };
                if get_s(&item, "payload_hash") != Some(hash.as_str()) {
                    return Ok(Claim::PayloadMismatch);
                }
                match to_entry(&item) {
                    Some(entry) if entry.status == Status::Completed => {
                        Ok(Claim::Completed(Box::new(entry)))
                    }
                    _ => Ok(Claim::InProgress),
                }
            }
            Err(e) => Err(LedgerError(aws_error(&e))),
        }
    }

    async fn complete(&self, event_id: &str, report: &Report) -> Result<(), LedgerError> {
        self.finish(event_id, report, Status::Completed).await
    }

    async fn release(&self, event_id: &str, report: &Report) -> Result<(), LedgerError> {
        self.finish(event_id, report, Status::Retry).await
    }

    async fn list(&self, limit: usize) -> Result<Vec<Entry>, LedgerError> {
        let mut entries = Vec::new();
        let mut pages = self
            .client
            .scan()
            .table_name(&self.table)
            .filter_expression("begins_with(pk, :p)")
            .expression_attribute_values(":p", s("event#"))
            .into_paginator()
            .items()
            .send();
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| LedgerError(aws_error(&e)))?;
            if let Some(entry) = to_entry(&item) {
                entries.push(entry);
            }
        }
        entries.sort_by(|a, b| {
            b.updated_at
                .cmp(&a.updated_at)
                .then(a.event_id.cmp(&b.event_id))
        });
        entries.truncate(limit);
        Ok(entries)
    }
}

#[async_trait]
impl ReplayGuard for DynamoLedger {
    async fn first_seen(&self, id: &str, remember_for: Duration) -> Result<bool, ReplayStoreError> {
        let now = now();
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(format!("webhook#{id}")))
            .item("expires_at", n(now + remember_for.as_secs() as i64))
            .condition_expression("attribute_not_exists(pk) OR expires_at < :now")
            .expression_attribute_values(":now", n(now))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_failure(&e) => Ok(false),
            Err(e) => Err(ReplayStoreError(aws_error(&e))),
        }
    }

    async fn forget(&self, id: &str) {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(format!("webhook#{id}")))
            .send()
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %aws_error(&e), "could not forget webhook id");
        }
    }
}
