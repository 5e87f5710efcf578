//! A ledger store for fault and concurrency tests: every call goes to a real store, with the
//! test's hooks around it (wait, stop for good as a crashed worker would, count what is in
//! flight, do what another worker does meanwhile).

use std::sync::Arc;

use async_trait::async_trait;
use risk_responder::ledger::{LedgerError, NewItem, Store, Stored};

/// What a test does around the calls a [`HookedStore`] passes on. Every hook does nothing
/// unless the test says otherwise.
#[async_trait]
pub trait StoreHooks: Send + Sync {
    /// Before a single-key call (`get`, `put`, `delete`) on `key`.
    async fn enter(&self, _key: &str) {}
    /// After a single-key call on `key` returned.
    async fn leave(&self, _key: &str) {}
    /// Before a conditional put of `doc` under `key`, after [`StoreHooks::enter`].
    async fn before_put(&self, _key: &str, _doc: &str) {}
    /// After a conditional put: `written` is the new version, or `None` if another writer won.
    async fn after_put(&self, _key: &str, _doc: &str, _written: Option<u64>) {}
    /// Before a batch of creates (intake's one write per batch).
    async fn before_create_all(&self, _items: &[NewItem]) {}
}

/// A store that passes every call to `inner`, running `hooks` around them.
pub struct HookedStore<H> {
    pub inner: Arc<dyn Store>,
    pub hooks: H,
}

impl<H> HookedStore<H> {
    pub fn new(inner: Arc<dyn Store>, hooks: H) -> Self {
        Self { inner, hooks }
    }
}

#[async_trait]
impl<H: StoreHooks> Store for HookedStore<H> {
    async fn get(&self, key: &str) -> Result<Option<Stored>, LedgerError> {
        self.hooks.enter(key).await;
        let out = self.inner.get(key).await;
        self.hooks.leave(key).await;
        out
    }
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Stored>, LedgerError> {
        self.inner.get_many(keys).await
    }
    async fn create_all(&self, items: &[NewItem]) -> Result<usize, LedgerError> {
        self.hooks.before_create_all(items).await;
        self.inner.create_all(items).await
    }
    async fn put_all(&self, items: &[NewItem]) -> Result<(), LedgerError> {
        self.inner.put_all(items).await
    }
    async fn put(
        &self,
        key: &str,
        doc: &str,
        expected: u64,
        expires_at: Option<i64>,
    ) -> Result<Option<u64>, LedgerError> {
        self.hooks.enter(key).await;
        self.hooks.before_put(key, doc).await;
        let written = self.inner.put(key, doc, expected, expires_at).await;
        self.hooks.leave(key).await;
        let written = written?;
        self.hooks.after_put(key, doc, written).await;
        Ok(written)
    }
    async fn delete(&self, key: &str, expected: u64) -> Result<bool, LedgerError> {
        self.hooks.enter(key).await;
        let out = self.inner.delete(key, expected).await;
        self.hooks.leave(key).await;
        out
    }
    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<Stored>, LedgerError> {
        self.inner.list(prefix, limit).await
    }
}
