//! DynamoDB store (and Standard Webhooks replay guard) for Lambda. One table, partition key
//! `pk` (S); documents in `doc` (S) with a `version` (N) for conditional writes, TTL on
//! `expires_at`. Intake batches are written as transactions of up to 100 conditional puts.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, Put, TransactWriteItem};
use time::OffsetDateTime;

use super::{LedgerError, NewItem, Store, Stored};
use crate::ingress::signature::{ReplayGuard, ReplayStoreError};
use crate::support::aws::aws_error;

/// Items in one TransactWriteItems call (DynamoDB's limit).
const TRANSACTION_ITEMS: usize = 100;
/// Bytes in one transaction (DynamoDB's limit is 4 MB).
const TRANSACTION_BYTES: usize = 3_500_000;
/// Items in one BatchWriteItem call (DynamoDB's limit).
const BATCH_WRITE_ITEMS: usize = 25;
/// Keys in one BatchGetItem call (DynamoDB's limit).
const BATCH_GET_KEYS: usize = 100;

/// The ledger table.
#[derive(Clone)]
pub struct DynamoStore {
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

fn to_stored(item: &Item) -> Option<Stored> {
    Some(Stored {
        key: get_s(item, "pk")?.to_owned(),
        doc: get_s(item, "doc")?.to_owned(),
        version: get_n(item, "version").max(0) as u64,
        updated_at: get_n(item, "updated_at"),
    })
}

fn item(key: &str, doc: &str, version: u64, expires_at: Option<i64>) -> Item {
    let mut item = Item::new();
    item.insert("pk".into(), s(key));
    item.insert("doc".into(), s(doc));
    item.insert("version".into(), n(version as i64));
    item.insert("updated_at".into(), n(now()));
    if let Some(at) = expires_at {
        item.insert("expires_at".into(), n(at));
    }
    item
}

impl DynamoStore {
    /// A store over an existing table.
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

    /// One transaction of conditional puts; returns the keys that already existed, or `None`
    /// when everything was written.
    async fn transact(&self, chunk: &[&NewItem]) -> Result<Option<Vec<String>>, LedgerError> {
        let build = |e: aws_sdk_dynamodb::error::BuildError| LedgerError(e.to_string());
        let mut writes = Vec::with_capacity(chunk.len());
        for new in chunk {
            let put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(item(&new.key, &new.doc, 1, new.expires_at)))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .map_err(build)?;
            writes.push(TransactWriteItem::builder().put(put).build());
        }
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(writes))
            .send()
            .await;
        match result {
            Ok(_) => Ok(None),
            Err(e) => {
                let reasons = e
                    .as_service_error()
                    .and_then(|se| match se {
                        aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(c) => {
                            Some(c.cancellation_reasons().to_vec())
                        }
                        _ => None,
                    });
                match reasons {
                    Some(reasons) if reasons.len() == chunk.len() => {
                        let existing: Vec<String> = chunk
                            .iter()
                            .zip(&reasons)
                            .filter(|(_, r)| r.code() == Some("ConditionalCheckFailed"))
                            .map(|(new, _)| new.key.clone())
                            .collect();
                        if existing.is_empty() {
                            // Cancelled for another reason (a conflicting transaction, say).
                            Err(LedgerError(aws_error(&e)))
                        } else {
                            Ok(Some(existing))
                        }
                    }
                    _ => Err(LedgerError(aws_error(&e))),
                }
            }
        }
    }
}

#[async_trait]
impl Store for DynamoStore {
    async fn get(&self, key: &str) -> Result<Option<Stored>, LedgerError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| LedgerError(aws_error(&e)))?;
        Ok(out.item.as_ref().and_then(to_stored))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Stored>, LedgerError> {
        let mut unique: Vec<&String> = keys.iter().collect();
        unique.sort();
        unique.dedup();
        let mut found = Vec::new();
        for chunk in unique.chunks(BATCH_GET_KEYS) {
            let mut request = KeysAndAttributes::builder().consistent_read(true);
            for key in chunk {
                request = request.keys(HashMap::from([("pk".to_owned(), s(key.as_str()))]));
            }
            let mut pending = Some(request.build().map_err(|e| LedgerError(e.to_string()))?);
            let mut attempt = 0u32;
            while let Some(request) = pending.take() {
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, request)
                    .send()
                    .await
                    .map_err(|e| LedgerError(aws_error(&e)))?;
                if let Some(items) = out.responses.as_ref().and_then(|r| r.get(&self.table)) {
                    found.extend(items.iter().filter_map(to_stored));
                }
                pending = out
                    .unprocessed_keys
                    .and_then(|mut u| u.remove(&self.table))
                    .filter(|k| !k.keys().is_empty());
                if pending.is_some() {
                    attempt += 1;
                    if attempt > 8 {
                        return Err(LedgerError("BatchGetItem left keys unprocessed".into()));
                    }
                    tokio::time::sleep(Duration::from_millis(20 << attempt.min(6))).await;
                }
            }
        }
        Ok(found)
    }

    async fn create_all(&self, items: &[NewItem]) -> Result<usize, LedgerError> {
        // One write per key (a transaction may not name an item twice).
        let mut seen = std::collections::HashSet::new();
        let mut pending: Vec<&NewItem> = items.iter().filter(|i| seen.insert(&i.key)).collect();
        let mut created = 0;
        while !pending.is_empty() {
            let mut size = 0;
            let take = pending
                .iter()
                .take(TRANSACTION_ITEMS)
                .take_while(|i| {
                    size += i.key.len() + i.doc.len() + 64;
                    size <= TRANSACTION_BYTES
                })
                .count()
                .max(1);
            let mut chunk: Vec<&NewItem> = pending.drain(..take).collect();
            loop {
                match self.transact(&chunk).await? {
                    None => {
                        created += chunk.len();
                        break;
                    }
                    Some(existing) => {
                        chunk.retain(|i| !existing.contains(&i.key));
                        if chunk.is_empty() {
                            break;
                        }
                    }
                }
            }
        }
        Ok(created)
    }

    async fn put_all(&self, items: &[NewItem]) -> Result<(), LedgerError> {
        use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
        let mut seen = std::collections::HashSet::new();
        let unique: Vec<&NewItem> = items.iter().rev().filter(|i| seen.insert(&i.key)).collect();
        for chunk in unique.chunks(BATCH_WRITE_ITEMS) {
            let mut writes = Vec::with_capacity(chunk.len());
            for new in chunk {
                let put = PutRequest::builder()
                    .set_item(Some(item(&new.key, &new.doc, 1, new.expires_at)))
                    .build()
                    .map_err(|e| LedgerError(e.to_string()))?;
                writes.push(WriteRequest::builder().put_request(put).build());
            }
            let mut pending = Some(writes);
            let mut attempt = 0u32;
            while let Some(writes) = pending.take() {
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, writes)
                    .send()
                    .await
                    .map_err(|e| LedgerError(aws_error(&e)))?;
                pending = out
                    .unprocessed_items
                    .and_then(|mut u| u.remove(&self.table))
                    .filter(|w| !w.is_empty());
                if pending.is_some() {
                    attempt += 1;
                    if attempt > 8 {
                        return Err(LedgerError("BatchWriteItem left items unprocessed".into()));
                    }
                    tokio::time::sleep(Duration::from_millis(20 << attempt.min(6))).await;
                }
            }
        }
        Ok(())
    }

    async fn put(
        &self,
        key: &str,
        doc: &str,
        expected: u64,
        expires_at: Option<i64>,
    ) -> Result<Option<u64>, LedgerError> {
        let mut request = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item(key, doc, expected + 1, expires_at)));
        request = if expected == 0 {
            request.condition_expression("attribute_not_exists(pk)")
        } else {
            request
                .condition_expression("version = :expected")
                .expression_attribute_values(":expected", n(expected as i64))
        };
        match request.send().await {
            Ok(_) => Ok(Some(expected + 1)),
            Err(e) if is_conditional_failure(&e) => Ok(None),
            Err(e) => Err(LedgerError(aws_error(&e))),
        }
    }

    async fn delete(&self, key: &str, expected: u64) -> Result<bool, LedgerError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(key))
            .condition_expression("version = :expected")
            .expression_attribute_values(":expected", n(expected as i64))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_failure(&e) => Ok(false),
            Err(e) => Err(LedgerError(aws_error(&e))),
        }
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<Stored>, LedgerError> {
        let mut found = Vec::new();
        let mut pages = self
            .client
            .scan()
            .table_name(&self.table)
            .filter_expression("begins_with(pk, :p)")
            .expression_attribute_values(":p", s(prefix))
            .into_paginator()
            .items()
            .send();
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| LedgerError(aws_error(&e)))?;
            if let Some(stored) = to_stored(&item) {
                found.push(stored);
            }
        }
        found.sort_by(|a, b| b.updated_at.cmp(&a.updated_at).then(a.key.cmp(&b.key)));
        found.truncate(limit);
        Ok(found)
    }
}

#[async_trait]
impl ReplayGuard for DynamoStore {
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
