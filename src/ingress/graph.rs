//! Microsoft Graph change notifications: the validation handshake, batch parsing, and the
//! per-notification checks (clientState, tenant, validation tokens, decryption) that turn a
//! batch into [`RiskEvent`]s and [`LifecycleNotice`]s.

use std::sync::{Arc, OnceLock};

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::rsa::OaepPrivateDecryptingKey;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use tokio::sync::Semaphore;

use super::decrypt::{DecryptError, EncryptedContent, decrypt_content};
use super::validation_tokens::{TokenError, TokenVerifier};
use crate::config::Config;
use crate::event::{
    EventSource, Origin, OriginKind, RiskEvent, RiskLevel, Subject, derive_event_id,
};
use crate::ingress::secrets::IngressSecrets;
use crate::support::secret::SecretString;

/// Longest validation token echoed back (Graph's are well under this).
pub const MAX_VALIDATION_TOKEN_LEN: usize = 1024;

/// Why a handshake token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("validationToken is empty")]
    Empty,
    #[error("validationToken is longer than {MAX_VALIDATION_TOKEN_LEN} bytes")]
    TooLong,
    #[error("validationToken contains characters that are not allowed")]
    BadCharacters,
}

/// The decoded `validationToken` query parameter, if the request is a handshake.
/// `Some(Err(_))` when the parameter is present but unacceptable.
pub fn handshake_token(query: Option<&str>) -> Option<Result<String, HandshakeError>> {
    let query = query?;
    let (_, token) =
        form_urlencoded::parse(query.as_bytes()).find(|(name, _)| name == "validationToken")?;
    Some(check_handshake_token(&token).map(|()| token.into_owned()))
}

fn check_handshake_token(token: &str) -> Result<(), HandshakeError> {
    if token.is_empty() {
        return Err(HandshakeError::Empty);
    }
    if token.len() > MAX_VALIDATION_TOKEN_LEN {
        return Err(HandshakeError::TooLong);
    }
    // Printable ASCII only, and nothing that could form markup or break out of an attribute.
    let allowed = |c: char| {
        c.is_ascii_graphic() && !matches!(c, '<' | '>' | '&' | '"' | '\'' | '`') || c == ' '
    };
    if token.chars().all(allowed) {
        Ok(())
    } else {
        Err(HandshakeError::BadCharacters)
    }
}

/// Why a batch as a whole is not taken.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The body is not a notification batch at all (400).
    #[error("body is not a Graph notification batch: {0}")]
    NotABatch(String),
    /// More notifications than the configured cap (413); none of them is looked at.
    #[error("batch holds {count} notifications, more than the {cap} accepted in one request")]
    TooMany { count: usize, cap: usize },
    /// Its validation tokens could not be checked because the signing keys are unavailable:
    /// nothing is dropped, the batch is answered 503 so that Graph delivers it again.
    #[error("validation tokens could not be checked: {0}")]
    KeysUnavailable(String),
    /// Every core was busy with other batches' decryption until the batch's deadline: nothing
    /// is dropped, the batch is answered 503 so that Graph delivers it again.
    #[error("no decryption capacity before the deadline")]
    Busy,
}

/// One notification of a batch, as Graph sends it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChangeNotification {
    #[serde(default)]
    id: Option<String>,
    subscription_id: String,
    #[serde(default)]
    client_state: Option<String>,
    #[serde(default)]
    change_type: Option<String>,
    #[serde(default)]
    resource: Option<String>,
    #[serde(default)]
    tenant_id: Option<String>,
    #[serde(default)]
    resource_data: Option<serde_json::Value>,
    #[serde(default)]
    encrypted_content: Option<EncryptedContent>,
    #[serde(default)]
    lifecycle_event: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NotificationBatch {
    value: Vec<serde_json::Value>,
    #[serde(default)]
    validation_tokens: Option<Vec<String>>,
}

/// The batch's shape and size, without building its notifications (a `Vec` of a zero-sized
/// type does not allocate), so that an oversized batch is refused before any work on it.
#[derive(Deserialize)]
struct BatchShape {
    value: Vec<serde::de::IgnoredAny>,
}

/// Kinds of lifecycle notification Graph sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LifecycleKind {
    /// The subscription must be reauthorized (`POST /subscriptions/{id}/reauthorize`).
    ReauthorizationRequired,
    /// The subscription was removed; it must be recreated.
    SubscriptionRemoved,
    /// Notifications were missed; resynchronise.
    Missed,
}

/// A validated lifecycle notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LifecycleNotice {
    pub tenant_id: String,
    pub subscription_id: String,
    pub kind: LifecycleKind,
}

/// Why one notification of a batch was dropped. Never carries a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("notification is malformed: {0}")]
    Malformed(String),
    #[error("clientState is missing")]
    MissingClientState,
    #[error("clientState does not match")]
    ClientStateMismatch,
    #[error("tenantId is missing")]
    MissingTenant,
    #[error("tenant {0} is not allowed")]
    TenantNotAllowed(String),
    #[error("resource {0:?} is not a users or security/alerts resource")]
    UnsupportedResource(String),
    #[error("lifecycle event {0:?} is not known")]
    UnknownLifecycleEvent(String),
    #[error("encryptedContent without validationTokens")]
    MissingValidationTokens,
    #[error("validation token refused: {0}")]
    ValidationToken(TokenError),
    #[error("no validation token vouches for tenant {0}")]
    TenantNotVouched(String),
    #[error("no decryption key for encryptionCertificateId {0:?}")]
    UnknownDecryptionKey(String),
    #[error("encryptedContent refused: {0}")]
    Decryption(DecryptError),
    #[error("decrypted content is not JSON")]
    DecryptedNotJson,
    #[error("user was deleted: nothing to remediate")]
    UserDeleted,
    #[error(
        "subscription {0} was not created in the tenant the notification names (or not by this deployment)"
    )]
    SubscriptionNotRecorded(String),
}

impl Rejection {
    /// A short name for the reason, to count drops by.
    pub fn kind(&self) -> &'static str {
        match self {
            Rejection::Malformed(_) => "malformed",
            Rejection::MissingClientState => "client_state_missing",
            Rejection::ClientStateMismatch => "client_state_mismatch",
            Rejection::MissingTenant => "tenant_missing",
            Rejection::TenantNotAllowed(_) => "tenant_not_allowed",
            Rejection::UnsupportedResource(_) => "unsupported_resource",
            Rejection::UnknownLifecycleEvent(_) => "unknown_lifecycle_event",
            Rejection::MissingValidationTokens => "validation_tokens_missing",
            Rejection::ValidationToken(_) => "validation_token_refused",
            Rejection::TenantNotVouched(_) => "tenant_not_vouched",
            Rejection::UnknownDecryptionKey(_) => "decryption_key_unknown",
            Rejection::Decryption(_) => "decryption_failed",
            Rejection::DecryptedNotJson => "decrypted_not_json",
            Rejection::UserDeleted => "user_deleted",
            Rejection::SubscriptionNotRecorded(_) => "subscription_not_recorded",
        }
    }
}

/// A dropped notification: its position, subscription (when readable) and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub index: usize,
    pub subscription_id: Option<String>,
    /// The tenant the notification claims (not necessarily allowed).
    pub tenant_id: Option<String>,
    pub reason: Rejection,
}

/// Longest text of a sender-controlled value (a reason, an id) in a log line.
const LOGGED_VALUE_MAX: usize = 160;
/// Dropped notifications described in a batch's log line.
pub const DROP_SAMPLE: usize = 3;

fn clip(text: &str) -> String {
    match text.char_indices().nth(LOGGED_VALUE_MAX) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

impl BatchOutcome {
    /// The (tenant, subscription) pairs the kept notifications claim.
    pub fn subscriptions(&self) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> = self
            .events
            .iter()
            .filter_map(|e| {
                e.origin
                    .as_ref()
                    .map(|o| (e.tenant_id.clone(), o.by.clone()))
            })
            .chain(
                self.lifecycle
                    .iter()
                    .map(|n| (n.tenant_id.clone(), n.subscription_id.clone())),
            )
            .collect();
        pairs.sort();
        pairs.dedup();
        pairs
    }

    /// Keeps only the notifications of subscriptions `recorded` as created in the tenant they
    /// name; the others are dropped (a sender holding our clientState cannot speak for another
    /// tenant than its subscription's).
    pub fn keep_recorded(&mut self, recorded: &std::collections::HashSet<(String, String)>) {
        let known = |tenant: &str, subscription: &str| {
            recorded.contains(&(tenant.to_owned(), subscription.to_owned()))
        };
        let events = std::mem::take(&mut self.events);
        let positions = std::mem::take(&mut self.event_positions);
        for (event, index) in events.into_iter().zip(positions) {
            let subscription = event
                .origin
                .as_ref()
                .map(|o| o.by.clone())
                .unwrap_or_default();
            if known(&event.tenant_id, &subscription) {
                self.events.push(event);
                self.event_positions.push(index);
            } else {
                self.dropped.push(Dropped {
                    index,
                    subscription_id: Some(subscription.clone()),
                    tenant_id: Some(event.tenant_id),
                    reason: Rejection::SubscriptionNotRecorded(subscription),
                });
            }
        }
        let notices = std::mem::take(&mut self.lifecycle);
        let positions = std::mem::take(&mut self.lifecycle_positions);
        for (notice, index) in notices.into_iter().zip(positions) {
            if known(&notice.tenant_id, &notice.subscription_id) {
                self.lifecycle.push(notice);
                self.lifecycle_positions.push(index);
            } else {
                self.dropped.push(Dropped {
                    index,
                    subscription_id: Some(notice.subscription_id.clone()),
                    tenant_id: Some(notice.tenant_id),
                    reason: Rejection::SubscriptionNotRecorded(notice.subscription_id),
                });
            }
        }
        self.dropped.sort_by_key(|d| d.index);
    }

    /// Dropped notifications counted by reason.
    pub fn drop_counts(&self) -> std::collections::BTreeMap<&'static str, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for dropped in &self.dropped {
            *counts.entry(dropped.reason.kind()).or_insert(0) += 1;
        }
        counts
    }

    /// The first few dropped notifications, with sender-supplied text clipped.
    pub fn drop_sample(&self) -> Vec<serde_json::Value> {
        self.dropped
            .iter()
            .take(DROP_SAMPLE)
            .map(|d| {
                serde_json::json!({
                    "index": d.index,
                    "subscription_id": d.subscription_id.as_deref().map(clip),
                    "tenant_id": d.tenant_id.as_deref().map(clip),
                    "reason": clip(&d.reason.to_string()),
                })
            })
            .collect()
    }
}

/// What a batch yielded.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    pub events: Vec<RiskEvent>,
    pub lifecycle: Vec<LifecycleNotice>,
    pub dropped: Vec<Dropped>,
    /// Position in the batch of each event and each lifecycle notice.
    event_positions: Vec<usize>,
    lifecycle_positions: Vec<usize>,
}

/// Context a batch is checked against.
pub struct GraphIngress<'a> {
    pub config: &'a Config,
    pub secrets: &'a IngressSecrets,
    /// Verifier for `validationTokens`; `None` when no Graph app id is configured, in which
    /// case notifications with resource data are refused.
    pub tokens: Option<&'a TokenVerifier>,
    /// Until when the batch may wait for signing keys (the request's arrival plus
    /// [`crate::ingress::jwks::JwksPolicy::wait`]).
    pub deadline: tokio::time::Instant,
}

impl GraphIngress<'_> {
    /// Parses and checks a batch. Errors when the body is not a batch, holds more than
    /// [`Config::max_notifications_per_batch`] notifications, or when its tokens cannot be
    /// checked for want of signing keys (only if a notification passed the key-free checks);
    /// individual bad notifications are reported in [`BatchOutcome::dropped`].
    pub async fn process(&self, body: &[u8]) -> Result<BatchOutcome, BatchError> {
        let shape: BatchShape =
            serde_json::from_slice(body).map_err(|e| BatchError::NotABatch(e.to_string()))?;
        let cap = self.config.max_notifications_per_batch;
        if shape.value.len() > cap {
            return Err(BatchError::TooMany {
                count: shape.value.len(),
                cap,
            });
        }
        let batch: NotificationBatch =
            serde_json::from_slice(body).map_err(|e| BatchError::NotABatch(e.to_string()))?;
        // Key-free checks first (shape, clientState, tenant): a batch in which no notification
        // carries an accepted clientState of an allowed tenant is dropped without looking up a
        // signing key, so forged key ids from a sender without our clientState can neither
        // cause a fetch nor be answered 503.
        let mut claimed: Vec<(Option<String>, Option<String>)> =
            Vec::with_capacity(batch.value.len());
        let screened: Vec<Result<Screened, Rejection>> = batch
            .value
            .into_iter()
            .map(|raw| {
                let field = |name: &str| raw.get(name).and_then(|v| v.as_str()).map(str::to_owned);
                claimed.push((field("subscriptionId"), field("tenantId")));
                self.screen(raw)
            })
            .collect();
        let vouched = if screened.iter().any(Result::is_ok) {
            self.verify_tokens(batch.validation_tokens.as_deref()).await
        } else {
            // Every notification already has its reason; the tokens would change nothing.
            Vouched::NoTokens
        };
        if let Vouched::Unavailable(reason) = vouched {
            return Err(BatchError::KeysUnavailable(reason));
        }
        // What needs its content decrypted (an RSA unwrap each) is set aside and opened on
        // all cores at once.
        let mut results: Vec<(usize, Result<Item, Rejection>)> = Vec::with_capacity(claimed.len());
        let mut sealed = Vec::new();
        for (index, screened) in screened.into_iter().enumerate() {
            match screened.and_then(|s| self.check(s, &vouched)) {
                Ok(Checked::Ready(item)) => results.push((index, Ok(item))),
                Ok(Checked::Sealed(notification)) => sealed.push((index, notification)),
                Err(reason) => results.push((index, Err(reason))),
            }
        }
        results.extend(open_all(sealed, decryption_permits(), self.deadline).await?);
        results.sort_by_key(|(index, _)| *index);

        let mut outcome = BatchOutcome::default();
        for (index, result) in results {
            match result {
                Ok(Item::Event(event)) => {
                    outcome.events.push(*event);
                    outcome.event_positions.push(index);
                }
                Ok(Item::Lifecycle(notice)) => {
                    outcome.lifecycle.push(notice);
                    outcome.lifecycle_positions.push(index);
                }
                Err(reason) => {
                    let (subscription_id, tenant_id) = std::mem::take(&mut claimed[index]);
                    outcome.dropped.push(Dropped {
                        index,
                        subscription_id,
                        tenant_id,
                        reason,
                    })
                }
            }
        }
        Ok(outcome)
    }

    /// Verifies every token; the batch is trusted for resource data only if all pass.
    async fn verify_tokens(&self, tokens: Option<&[String]>) -> Vouched {
        let Some(tokens) = tokens.filter(|t| !t.is_empty()) else {
            return Vouched::NoTokens;
        };
        let Some(verifier) = self.tokens else {
            return Vouched::Refused(TokenError::Invalid(
                "no Graph application id configured to check the audience".into(),
            ));
        };
        // Checked together: they share one wait for the key set.
        let checks = tokens.iter().map(|token| {
            verifier.verify(token, |tid| self.config.tenant_allowed(tid), self.deadline)
        });
        let mut tenants = Vec::with_capacity(tokens.len());
        for result in futures_util::future::join_all(checks).await {
            match result {
                Ok(tid) => tenants.push(tid),
                Err(TokenError::KeysUnavailable(reason)) => return Vouched::Unavailable(reason),
                Err(e) => return Vouched::Refused(e),
            }
        }
        Vouched::Tenants(tenants)
    }

    /// The checks that need no signing key: shape, clientState, tenant.
    fn screen(&self, raw: serde_json::Value) -> Result<Screened, Rejection> {
        let n: ChangeNotification =
            serde_json::from_value(raw).map_err(|e| Rejection::Malformed(e.to_string()))?;
        let presented = n
            .client_state
            .as_deref()
            .ok_or(Rejection::MissingClientState)?;
        if !client_state_matches(presented, &self.secrets.client_states) {
            return Err(Rejection::ClientStateMismatch);
        }
        let tenant_id = n
            .tenant_id
            .as_deref()
            .ok_or(Rejection::MissingTenant)?
            .to_ascii_lowercase();
        if !self.config.tenant_allowed(&tenant_id) {
            return Err(Rejection::TenantNotAllowed(tenant_id));
        }
        Ok(Screened {
            notification: n,
            tenant_id,
        })
    }

    /// The checks of a screened notification that depend on the batch's tokens.
    fn check(&self, screened: Screened, vouched: &Vouched) -> Result<Checked, Rejection> {
        // A batch whose tokens fail is suspicious as a whole: drop every notification in it.
        if let Vouched::Refused(e) = vouched {
            return Err(Rejection::ValidationToken(e.clone()));
        }
        let Screened {
            notification: n,
            tenant_id,
        } = screened;
        if let Some(kind) = &n.lifecycle_event {
            let kind = match kind.as_str() {
                "reauthorizationRequired" => LifecycleKind::ReauthorizationRequired,
                "subscriptionRemoved" => LifecycleKind::SubscriptionRemoved,
                "missed" => LifecycleKind::Missed,
                other => return Err(Rejection::UnknownLifecycleEvent(other.to_owned())),
            };
            return Ok(Checked::Ready(Item::Lifecycle(LifecycleNotice {
                tenant_id,
                subscription_id: n.subscription_id,
                kind,
            })));
        }

        match &n.encrypted_content {
            None => to_event(n, tenant_id, None).map(|e| Checked::Ready(Item::Event(Box::new(e)))),
            Some(content) => {
                let key = self.decryption_key(content, &tenant_id, vouched)?;
                Ok(Checked::Sealed(Box::new(Sealed {
                    notification: n,
                    tenant_id,
                    key,
                })))
            }
        }
    }

    /// The key that opens `content`, once the batch's tokens vouch for the tenant.
    fn decryption_key(
        &self,
        content: &EncryptedContent,
        tenant_id: &str,
        vouched: &Vouched,
    ) -> Result<Arc<OaepPrivateDecryptingKey>, Rejection> {
        match vouched {
            Vouched::NoTokens => return Err(Rejection::MissingValidationTokens),
            Vouched::Refused(e) => return Err(Rejection::ValidationToken(e.clone())),
            Vouched::Unavailable(_) => {
                return Err(Rejection::ValidationToken(TokenError::KeysUnavailable(
                    "signing keys unavailable".into(),
                )));
            }
            Vouched::Tenants(tenants) => {
                if !tenants.iter().any(|t| t == tenant_id) {
                    return Err(Rejection::TenantNotVouched(tenant_id.to_owned()));
                }
            }
        }
        let cert_id = content
            .encryption_certificate_id
            .clone()
            .unwrap_or_default();
        self.secrets
            .shared_decryption_key(&cert_id)
            .ok_or(Rejection::UnknownDecryptionKey(cert_id))
    }
}

/// A notification that passed every check but the opening of its `encryptedContent`.
struct Sealed {
    notification: ChangeNotification,
    tenant_id: String,
    key: Arc<OaepPrivateDecryptingKey>,
}

impl Sealed {
    /// Decrypts the content (RSA unwrap, HMAC, AES) and builds the event. CPU-bound.
    fn open(self) -> Result<Item, Rejection> {
        let Sealed {
            notification,
            tenant_id,
            key,
        } = self;
        let content = notification
            .encrypted_content
            .as_ref()
            .ok_or(Rejection::MissingValidationTokens)?;
        let plaintext = decrypt_content(content, &key).map_err(Rejection::Decryption)?;
        let decrypted: serde_json::Value =
            serde_json::from_slice(&plaintext).map_err(|_| Rejection::DecryptedNotJson)?;
        to_event(notification, tenant_id, Some(decrypted)).map(|e| Item::Event(Box::new(e)))
    }
}

/// Threads that may decrypt at once, across every request of the process: one per core.
fn decryption_permits() -> &'static Arc<Semaphore> {
    static PERMITS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    PERMITS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Arc::new(Semaphore::new(cores))
    })
}

/// Opens sealed notifications on blocking threads, split into one share per core and bounded
/// by [`decryption_permits`], so a batch uses every core and concurrent batches queue for
/// them (first come, first served) instead of oversubscribing the machine. A batch that
/// cannot get a core before `deadline` is [`BatchError::Busy`].
async fn open_all(
    sealed: Vec<(usize, Box<Sealed>)>,
    permits: &Arc<Semaphore>,
    deadline: tokio::time::Instant,
) -> Result<Vec<(usize, Result<Item, Rejection>)>, BatchError> {
    if sealed.is_empty() {
        return Ok(Vec::new());
    }
    let shares = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(sealed.len());
    let per_share = sealed.len().div_ceil(shares);
    let mut pending = sealed.into_iter().peekable();
    let mut tasks = Vec::with_capacity(shares);
    while pending.peek().is_some() {
        let share: Vec<_> = pending.by_ref().take(per_share).collect();
        let permits = permits.clone();
        tasks.push(async move {
            let permit = tokio::time::timeout_at(deadline, permits.acquire_owned())
                .await
                .map_err(|_| BatchError::Busy)?
                .map_err(|_| BatchError::Busy)?;
            let opened = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                share
                    .into_iter()
                    .map(|(index, sealed)| (index, sealed.open()))
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|_| BatchError::Busy)?;
            Ok::<_, BatchError>(opened)
        });
    }
    let mut out = Vec::new();
    for share in futures_util::future::join_all(tasks).await {
        out.extend(share?);
    }
    Ok(out)
}

enum Vouched {
    NoTokens,
    Refused(TokenError),
    /// The signing keys could not be had: the tokens are neither good nor bad.
    Unavailable(String),
    Tenants(Vec<String>),
}

enum Item {
    Event(Box<RiskEvent>),
    Lifecycle(LifecycleNotice),
}

/// A notification with an accepted clientState of an allowed tenant.
struct Screened {
    notification: ChangeNotification,
    tenant_id: String,
}

/// What the cheap checks make of a notification.
enum Checked {
    Ready(Item),
    Sealed(Box<Sealed>),
}

/// Constant-time comparison of the presented clientState against every accepted value.
/// Both sides are hashed first so neither content nor length leaks through timing.
pub fn client_state_matches(presented: &str, accepted: &[SecretString]) -> bool {
    let presented = digest(&SHA256, presented.as_bytes());
    accepted.iter().fold(false, |found, candidate| {
        let candidate = digest(&SHA256, candidate.expose().as_bytes());
        found | bool::from(presented.as_ref().ct_eq(candidate.as_ref()))
    })
}

fn to_event(
    n: ChangeNotification,
    tenant_id: String,
    decrypted: Option<serde_json::Value>,
) -> Result<RiskEvent, Rejection> {
    let resource = n.resource.clone().unwrap_or_default();
    let change_type = n.change_type.clone().unwrap_or_default();
    let (source, subject, risk_level) =
        classify(&resource, n.resource_data.as_ref(), decrypted.as_ref())?;
    if source == EventSource::GraphUser && change_type == "deleted" {
        return Err(Rejection::UserDeleted);
    }
    let notification_id = n.id.clone().unwrap_or_default();
    let received_at = OffsetDateTime::now_utc();
    let event_id = derive_event_id(&[
        "graph",
        &tenant_id,
        &n.subscription_id,
        &resource,
        &change_type,
        &change_key(&notification_id, n.resource_data.as_ref(), received_at),
    ]);
    let source_id = if notification_id.is_empty() {
        format!("{}:{resource}", n.subscription_id)
    } else {
        notification_id
    };
    Ok(RiskEvent {
        origin: Some(Origin {
            via: OriginKind::GraphSubscription,
            by: n.subscription_id.clone(),
            tenants: vec![tenant_id.clone()],
        }),
        event_id,
        tenant_id,
        source,
        subject,
        risk_level,
        detected_at: received_at,
        source_id,
        resource_data: decrypted,
    })
}

/// What tells one change of a resource from another: the notification id; else the resource's
/// `@odata.etag`; else nothing, so each delivery is a signal of its own. Signals are cheap:
/// the user's case absorbs repeats, so a benign change never hides a later real one.
fn change_key(
    notification_id: &str,
    resource_data: Option<&serde_json::Value>,
    at: OffsetDateTime,
) -> String {
    if !notification_id.is_empty() {
        return notification_id.to_owned();
    }
    if let Some(etag) = resource_data
        .and_then(|d| d.get("@odata.etag"))
        .and_then(|v| v.as_str())
    {
        return format!("etag:{etag}");
    }
    format!("delivery:{}:{}", at.unix_timestamp(), uuid::Uuid::new_v4())
}

/// Maps a notification's resource to an event source and subject.
fn classify(
    resource: &str,
    resource_data: Option<&serde_json::Value>,
    decrypted: Option<&serde_json::Value>,
) -> Result<(EventSource, Subject, RiskLevel), Rejection> {
    let lower = resource.to_ascii_lowercase();
    let id_from_data = || {
        resource_data
            .and_then(|d| d.get("id"))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    if let Some(rest) = lower.strip_prefix("users/") {
        let id = last_segment(&resource[resource.len() - rest.len()..])
            .map(str::to_owned)
            .or_else(id_from_data);
        let upn = decrypted
            .and_then(|d| d.get("userPrincipalName"))
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        if id.is_none() && upn.is_none() {
            return Err(Rejection::UnsupportedResource(resource.to_owned()));
        }
        return Ok((
            EventSource::GraphUser,
            Subject::User { id, upn },
            RiskLevel::Unknown,
        ));
    }
    if let Some(rest) = lower.strip_prefix("security/alerts/") {
        let alert_id = last_segment(&resource[resource.len() - rest.len()..])
            .map(str::to_owned)
            .or_else(id_from_data)
            .ok_or_else(|| Rejection::UnsupportedResource(resource.to_owned()))?;
        let severity = decrypted
            .and_then(|d| d.get("severity"))
            .and_then(|v| v.as_str())
            .map_or(RiskLevel::Unknown, RiskLevel::parse_lenient);
        let user = decrypted
            .and_then(|d| d.get("userStates"))
            .and_then(|v| v.as_array())
            .and_then(|states| states.first())
            .map(|state| Subject::User {
                id: state
                    .get("aadUserId")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned),
                upn: state
                    .get("userPrincipalName")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned),
            });
        let subject = user.unwrap_or(Subject::SecurityAlert { id: alert_id });
        return Ok((EventSource::GraphSecurityAlert, subject, severity));
    }
    Err(Rejection::UnsupportedResource(resource.to_owned()))
}

/// The first path segment of `rest`, or `None` if empty.
fn last_segment(rest: &str) -> Option<&str> {
    rest.split('/').next().filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR_KEY: &str =
        include_str!("../../tests/vectors/graph-rich-notification/private-key.pem");
    const VECTOR_CONTENT: &str =
        include_str!("../../tests/vectors/graph-rich-notification/encrypted-content.json");

    fn sealed(n: usize) -> Vec<(usize, Box<Sealed>)> {
        use crate::support::secret::SecretDocument;
        let secrets = IngressSecrets::from_json(
            &serde_json::json!({ "decryption_keys": { "custom-id-for-testing": VECTOR_KEY } })
                .to_string(),
        )
        .unwrap();
        let key = secrets
            .shared_decryption_key("custom-id-for-testing")
            .unwrap();
        let content: serde_json::Value = serde_json::from_str(VECTOR_CONTENT).unwrap();
        (0..n)
            .map(|i| {
                let notification: ChangeNotification = serde_json::from_value(serde_json::json!({
                    "id": format!("n-{i}"), "subscriptionId": "s", "changeType": "updated",
                    "resource": format!("Users/6e7b768e-07e2-4810-8459-{i:012}"),
                    "tenantId": "t", "encryptedContent": content,
                }))
                .unwrap();
                let sealed = Sealed {
                    notification,
                    tenant_id: "t".into(),
                    key: key.clone(),
                };
                (i, Box::new(sealed))
            })
            .collect()
    }

    #[tokio::test]
    async fn sealed_notifications_are_opened_on_every_core_and_keep_their_place() {
        let permits = Arc::new(Semaphore::new(2));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut opened = open_all(sealed(5), &permits, deadline).await.unwrap();
        opened.sort_by_key(|(index, _)| *index);
        assert_eq!(
            opened.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
        for (index, item) in opened {
            let Ok(Item::Event(event)) = item else {
                panic!("notification {index} not opened");
            };
            assert_eq!(event.source_id, format!("n-{index}"));
            let data = event.resource_data.expect("decrypted content kept");
            assert_eq!(data["body"]["content"], "Hello World");
        }
        assert_eq!(permits.available_permits(), 2, "every core given back");
    }

    #[tokio::test]
    async fn a_batch_that_gets_no_core_before_its_deadline_is_busy() {
        let permits = Arc::new(Semaphore::new(0));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(50);
        let started = std::time::Instant::now();
        let result = open_all(sealed(3), &permits, deadline).await;
        assert!(matches!(result, Err(BatchError::Busy)));
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn handshake_decodes_and_bounds_the_token() {
        let token = handshake_token(Some(
            "validationToken=Validation%3a+Testing+client+application+reachability",
        ));
        assert_eq!(
            token,
            Some(Ok(
                "Validation: Testing client application reachability".into()
            ))
        );
        assert_eq!(handshake_token(Some("other=1")), None);
        assert_eq!(handshake_token(None), None);
        assert_eq!(
            handshake_token(Some("validationToken=%3Cscript%3E")),
            Some(Err(HandshakeError::BadCharacters))
        );
        assert_eq!(
            handshake_token(Some("validationToken=")),
            Some(Err(HandshakeError::Empty))
        );
        let long = format!(
            "validationToken={}",
            "a".repeat(MAX_VALIDATION_TOKEN_LEN + 1)
        );
        assert_eq!(
            handshake_token(Some(&long)),
            Some(Err(HandshakeError::TooLong))
        );
    }

    #[test]
    fn client_state_compares_against_every_accepted_value() {
        let accepted = [
            SecretString::new("old-state"),
            SecretString::new("new-state"),
        ];
        assert!(client_state_matches("new-state", &accepted));
        assert!(client_state_matches("old-state", &accepted));
        assert!(!client_state_matches("new-stat", &accepted));
        assert!(!client_state_matches("", &accepted));
        assert!(!client_state_matches("new-state", &[]));
    }

    #[test]
    fn changes_without_notification_id_are_told_apart() {
        let at = OffsetDateTime::from_unix_timestamp(1_795_500_000).unwrap();
        let later = at + time::Duration::hours(5);
        assert_eq!(change_key("n-1", None, at), "n-1");
        let data = serde_json::json!({ "@odata.etag": "W/\"abc\"" });
        assert_eq!(
            change_key("", Some(&data), at),
            change_key("", Some(&data), later)
        );
        // Without id or etag, two deliveries are two signals, even within the same second.
        assert_ne!(change_key("", None, at), change_key("", None, at));
    }

    #[test]
    fn resources_map_to_subjects() {
        let (source, subject, _) = classify("Users/abc-123", None, None).unwrap();
        assert_eq!(source, EventSource::GraphUser);
        assert_eq!(
            subject,
            Subject::User {
                id: Some("abc-123".into()),
                upn: None
            }
        );
        let (source, subject, _) = classify("security/alerts/al-9", None, None).unwrap();
        assert_eq!(source, EventSource::GraphSecurityAlert);
        assert_eq!(subject, Subject::SecurityAlert { id: "al-9".into() });
        assert!(matches!(
            classify("me/messages/1", None, None),
            Err(Rejection::UnsupportedResource(_))
        ));
    }
}
