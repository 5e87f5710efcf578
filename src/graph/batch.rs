//! JSON batching: up to 20 requests in one `POST /$batch`. Each member still counts against
//! its own service limit, as Microsoft counts it: a batch is cut so that no budget gets more
//! members than its window admits, and the limiter takes a slot per member before the batch is
//! sent. A tenant's per-user reads and writes cost one HTTP round trip per twenty, not one
//! request per twenty. Members answered 429 or 5xx are retried, honouring their own
//! `Retry-After` (a 429 without one waits out the budget's window).

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use super::limiter::Budget;
use super::{GraphClient, GraphError};

/// Most requests in one `$batch` (Graph's limit).
pub const BATCH_MAX: usize = 20;
/// Most `sendMail` requests to one mailbox in one batch (Outlook allows 4 concurrent requests
/// per app and mailbox, and Graph hands Outlook up to 4 of a batch's members at a time).
pub const MAIL_BATCH_MAX: usize = 4;
/// Most `$batch` requests one client has in flight at once (every call together). Graph
/// documents no concurrency limit for the directory, reports or Identity Protection (their
/// limits are rates, kept by the limiter); Outlook's 4 per mailbox are kept by the mail slots.
/// This bound keeps a burst from opening hundreds of connections: 8 batches are up to 160
/// requests in flight.
pub const BATCHES_IN_FLIGHT: usize = 8;

/// One request of a batch. Its `Debug` leaves the body out: a body may hold a temporary
/// password (the reset PATCH, the password mail).
#[derive(Clone)]
pub struct BatchItem {
    pub method: Method,
    /// Relative to the version root, e.g. `/users/{id}/revokeSignInSessions`.
    pub url: String,
    pub body: Option<Value>,
}

impl std::fmt::Debug for BatchItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchItem")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("body", &self.body.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl BatchItem {
    /// A GET.
    pub fn get(url: impl Into<String>) -> Self {
        Self {
            method: Method::GET,
            url: url.into(),
            body: None,
        }
    }

    /// A request with a JSON body (or none).
    pub fn new(method: Method, url: impl Into<String>, body: Option<Value>) -> Self {
        Self {
            method,
            url: url.into(),
            body,
        }
    }
}

fn member_error(status: u16, body: &Value) -> GraphError {
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    match status {
        403 => GraphError::Forbidden { code, message },
        404 => GraphError::NotFound { code, message },
        _ => GraphError::Api {
            status,
            code,
            message,
        },
    }
}

/// The limit a member counts against: its budget, and for mail the sending mailbox.
fn member_key(item: &BatchItem) -> (Budget, String) {
    let budget = Budget::of(&item.method, &item.url);
    let mailbox = if budget == Budget::Mail {
        item.url
            .split('/')
            .nth(2)
            .unwrap_or("")
            .to_ascii_lowercase()
    } else {
        String::new()
    };
    (budget, mailbox)
}

/// The JSON of one member. A write always carries a body and its `Content-Type` (Graph refuses
/// the whole batch otherwise, "Write request id : … does not contain Content-Type header or
/// body"): a bodyless action such as `revokeSignInSessions` sends an empty object.
fn member_json(id: usize, item: &BatchItem) -> Value {
    let mut request = json!({
        "id": id.to_string(),
        "method": item.method.as_str(),
        "url": item.url,
    });
    let write = matches!(item.method, Method::POST | Method::PATCH | Method::PUT);
    let body = match &item.body {
        Some(body) => Some(body.clone()),
        None if write => Some(json!({})),
        None => None,
    };
    if let Some(body) = body {
        request["body"] = body;
        request["headers"] = json!({ "Content-Type": "application/json" });
    }
    request
}

impl GraphClient {
    /// Sends `items` in batches of up to [`BATCH_MAX`]; returns one result per item, in order.
    /// Every member counts against its own limit (Microsoft counts each one): a batch never
    /// holds more members of a budget than the budget's window admits (at most 5 sign-in or
    /// registration reads, 1 Identity Protection request, [`MAIL_BATCH_MAX`] mails to one
    /// mailbox), and the limiter admits each batch's members before it is sent.
    pub async fn batch(&self, tenant: &str, items: &[BatchItem]) -> Vec<Result<Value, GraphError>> {
        self.batch_sized(tenant, items, BATCH_MAX).await
    }

    /// As [`GraphClient::batch`], with at most `size` requests per `$batch`. The batches go at
    /// once, each holding one of the client's [`BATCHES_IN_FLIGHT`] places while it is sent
    /// (shared with every other call of the client), so a call's many batches cost about one
    /// round trip per [`BATCHES_IN_FLIGHT`], not one each.
    pub async fn batch_sized(
        &self,
        tenant: &str,
        items: &[BatchItem],
        size: usize,
    ) -> Vec<Result<Value, GraphError>> {
        let size = size.clamp(1, BATCH_MAX);
        let mut results: Vec<Option<Result<Value, GraphError>>> = vec![None; items.len()];
        let mut pending: Vec<usize> = (0..items.len()).collect();
        let mut attempt = 0u32;
        while !pending.is_empty() {
            attempt += 1;
            let mut again = Vec::new();
            let mut wait = Duration::ZERO;
            let sent =
                futures_util::future::join_all(self.chunks(items, &pending, size).into_iter().map(
                    |chunk| async move {
                        let answer = self.send_chunk(tenant, items, &chunk).await;
                        (chunk, answer)
                    },
                ))
                .await;
            for (chunk, answer) in sent {
                let responses = match answer {
                    Ok(responses) => responses,
                    Err(e) => {
                        for &i in &chunk {
                            results[i] = Some(Err(e.clone()));
                        }
                        continue;
                    }
                };
                for response in responses {
                    let Some(i) = response["id"]
                        .as_str()
                        .and_then(|id| id.parse::<usize>().ok())
                        .filter(|i| chunk.contains(i))
                    else {
                        continue;
                    };
                    let status = response["status"].as_u64().unwrap_or(0) as u16;
                    let body = response.get("body").cloned().unwrap_or(Value::Null);
                    if (200..300).contains(&status) {
                        results[i] = Some(Ok(body));
                        continue;
                    }
                    let retryable = matches!(status, 429 | 500 | 502 | 503 | 504);
                    if retryable && attempt < self.retry.max_attempts {
                        let after = response["headers"]
                            .as_object()
                            .and_then(|h| {
                                h.iter()
                                    .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
                                    .and_then(|(_, v)| v.as_str())
                                    .and_then(|v| v.trim().parse::<u64>().ok())
                            })
                            .map(Duration::from_secs);
                        if after.is_some_and(|after| after > self.retry.max_delay) {
                            results[i] = Some(Err(GraphError::Throttled { attempts: attempt }));
                            continue;
                        }
                        // Without Retry-After, a 429 waits out the member's budget window.
                        let after = after.unwrap_or_else(|| {
                            if status == 429 {
                                self.window_wait(member_key(&items[i]).0)
                            } else {
                                self.backoff(attempt)
                            }
                        });
                        wait = wait.max(after);
                        again.push(i);
                        continue;
                    }
                    results[i] = Some(Err(if status == 429 {
                        GraphError::Throttled { attempts: attempt }
                    } else {
                        member_error(status, &body)
                    }));
                }
                for &i in &chunk {
                    if results[i].is_none() && !again.contains(&i) {
                        results[i] = Some(Err(GraphError::Decode(
                            "the batch answered without this request".into(),
                        )));
                    }
                }
            }
            if again.is_empty() {
                break;
            }
            again.sort_unstable();
            tokio::time::sleep(wait).await;
            pending = again;
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(GraphError::Decode("no answer".into()))))
            .collect()
    }

    /// Sends one `$batch` of `chunk` and returns its answers. First the slots of its mails'
    /// mailboxes (held until it is answered), then a place among the client's batches in
    /// flight, then the limiter's admission of its members, right before it goes: a member is
    /// counted when Graph sees it, never earlier. Always in this order, so a batch holding
    /// a place never waits for a mailbox (no batch waits for another in a circle).
    async fn send_chunk(
        &self,
        tenant: &str,
        items: &[BatchItem],
        chunk: &[usize],
    ) -> Result<Vec<Value>, GraphError> {
        // Its mails hold this process's slots of their mailboxes while it is in flight.
        let mut mails: BTreeMap<String, usize> = BTreeMap::new();
        for &i in chunk {
            let (budget, mailbox) = member_key(&items[i]);
            if budget == Budget::Mail {
                *mails.entry(mailbox).or_default() += 1;
            }
        }
        let mut held = Vec::with_capacity(mails.len());
        for (mailbox, count) in &mails {
            held.push(self.mail_slots().take(tenant, mailbox, *count).await?);
        }
        let answer = async {
            let _place = self.batch_place().await;
            self.acquire_members(tenant, items, chunk).await?;
            let requests: Vec<Value> = chunk.iter().map(|&i| member_json(i, &items[i])).collect();
            self.send(
                tenant,
                Method::POST,
                "/$batch",
                Some(&json!({ "requests": requests })),
            )
            .await
        }
        .await;
        for slots in held {
            slots.release().await;
        }
        Ok(answer?["responses"].as_array().cloned().unwrap_or_default())
    }

    /// Splits `pending` into batches of at most `size` members in which no limit gets more
    /// members than its window admits (first fit, order kept within a batch).
    fn chunks(&self, items: &[BatchItem], pending: &[usize], size: usize) -> Vec<Vec<usize>> {
        type Chunk = (Vec<usize>, BTreeMap<(Budget, String), usize>);
        let mut chunks: Vec<Chunk> = Vec::new();
        for &i in pending {
            let key = member_key(&items[i]);
            let mut cap = self.limiter.limit(key.0).0.max(1);
            if key.0 == Budget::Mail {
                cap = cap.min(MAIL_BATCH_MAX).min(self.mail_slots().per_mailbox());
            }
            let fits = chunks.iter_mut().find(|(members, counts)| {
                members.len() < size && counts.get(&key).copied().unwrap_or(0) < cap
            });
            match fits {
                Some((members, counts)) => {
                    members.push(i);
                    *counts.entry(key).or_default() += 1;
                }
                None => chunks.push((vec![i], BTreeMap::from([(key, 1)]))),
            }
        }
        chunks.into_iter().map(|(members, _)| members).collect()
    }

    async fn acquire_members(
        &self,
        tenant: &str,
        items: &[BatchItem],
        chunk: &[usize],
    ) -> Result<(), GraphError> {
        let mut counts: BTreeMap<(Budget, String), usize> = BTreeMap::new();
        for &i in chunk {
            *counts.entry(member_key(&items[i])).or_default() += 1;
        }
        for ((budget, key), count) in counts {
            self.limiter.acquire(tenant, budget, &key, count).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_a_body() {
        let item = BatchItem::new(
            Method::PATCH,
            "/users/u1",
            Some(json!({"passwordProfile": {"password": "Temp-Secret-123"}})),
        );
        let shown = format!("{item:?}");
        assert!(shown.contains("/users/u1"), "{shown}");
        assert!(!shown.contains("Temp-Secret-123"), "{shown}");
    }
}
