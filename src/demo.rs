//! The simulated tenant wired to the product (feature `demo`, on by default; Lambda artifacts
//! are built without it): the demo policy, and Graph and incident-comment clients for a
//! [`GraphSimulator`] built as the deployed functions build theirs, for `--demo`, the tests and
//! the benchmarks.

use std::sync::Arc;
use std::time::Duration;

pub use graph_simulator::demo as tenant;
pub use graph_simulator::{self as simulator, GraphSimulator};

use crate::cases::incident::CommentPath;
use crate::graph::limiter::{Limits, LocalLimiter, RateLimiter, SharedLimiter};
use crate::graph::{ClientCredential, GraphClient, RetryPolicy, TokenProvider};
use crate::ledger::Ledger;
use crate::respond::writeback::{ARM_SCOPE, ArmClient, IncidentCommenter};
use crate::support::secret::SecretString;

/// The demo policy: the embedded policy's rules, report-only, the break-glass account
/// protected, users told what to do, self-remediation for registered users.
pub const POLICY: &str = include_str!("../config/demo-policy.toml");

/// Retries for clients of the simulator: `max_attempts`, millisecond backoff, short timeouts.
fn quick_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
        max_pages: 50,
    }
}

/// Clients of the product for a simulated tenant.
pub trait SimulatedClients {
    /// A Graph client: `credential`, `max_attempts`, millisecond backoff, and an in-process
    /// limiter using the whole Identity Protection budget.
    fn client(&self, credential: ClientCredential, max_attempts: u32) -> Arc<GraphClient>;
    /// As [`SimulatedClients::client`], with `limiter`.
    fn client_with(
        &self,
        credential: ClientCredential,
        max_attempts: u32,
        limiter: Arc<dyn RateLimiter>,
    ) -> Arc<GraphClient>;
    /// As [`SimulatedClients::client_with`], for one of `workers` processes running at once
    /// (each keeps to its share of a mailbox's concurrent requests).
    fn client_of_workers(
        &self,
        credential: ClientCredential,
        max_attempts: u32,
        limiter: Arc<dyn RateLimiter>,
        workers: usize,
    ) -> Arc<GraphClient>;
    /// A client as a deployed worker has it (`app::shared_graph_client`): one of `workers`
    /// processes sharing `ledger`, whose rate windows and mailboxes' concurrent requests it
    /// keeps there, using `identity_protection_share` of the tenant's Identity Protection budget.
    fn shared_client(
        &self,
        credential: ClientCredential,
        max_attempts: u32,
        ledger: &Ledger,
        identity_protection_share: f64,
        workers: usize,
    ) -> Arc<GraphClient>;
    /// A client of application `app_id` (registered in the directory's `apps` with `secret`),
    /// with an in-process limiter.
    fn app_client(&self, app_id: &str, secret: &str, max_attempts: u32) -> Arc<GraphClient>;
    /// A client with the right client secret.
    fn secret_client(&self, max_attempts: u32) -> Arc<GraphClient>;
    /// An incident commenter over this simulator for `path`, with the application and
    /// credential of `graph`.
    fn incident_commenter(
        &self,
        graph: &Arc<GraphClient>,
        path: CommentPath,
        max_attempts: u32,
    ) -> IncidentCommenter;
}

/// A Graph client of application `app_id` for `simulator`, before any limiter is set.
fn bare_client(
    simulator: &GraphSimulator,
    app_id: &str,
    credential: ClientCredential,
    max_attempts: u32,
) -> GraphClient {
    let http = reqwest::Client::new();
    let tokens = Arc::new(TokenProvider::new(
        http.clone(),
        simulator.authority(),
        app_id,
        credential,
        "https://graph.microsoft.com/.default",
    ));
    GraphClient::new(
        http,
        simulator.graph_url(),
        tokens,
        quick_retry(max_attempts),
    )
}

impl SimulatedClients for GraphSimulator {
    fn client(&self, credential: ClientCredential, max_attempts: u32) -> Arc<GraphClient> {
        self.client_with(
            credential,
            max_attempts,
            Arc::new(LocalLimiter::new(Limits::published(1.0))),
        )
    }

    fn client_with(
        &self,
        credential: ClientCredential,
        max_attempts: u32,
        limiter: Arc<dyn RateLimiter>,
    ) -> Arc<GraphClient> {
        self.client_of_workers(credential, max_attempts, limiter, 1)
    }

    fn client_of_workers(
        &self,
        credential: ClientCredential,
        max_attempts: u32,
        limiter: Arc<dyn RateLimiter>,
        workers: usize,
    ) -> Arc<GraphClient> {
        Arc::new(
            bare_client(self, simulator::CLIENT_ID, credential, max_attempts)
                .with_limiter(limiter)
                .with_concurrent_workers(workers),
        )
    }

    fn shared_client(
        &self,
        credential: ClientCredential,
        max_attempts: u32,
        ledger: &Ledger,
        identity_protection_share: f64,
        workers: usize,
    ) -> Arc<GraphClient> {
        let client = bare_client(self, simulator::CLIENT_ID, credential, max_attempts);
        let limiter = Arc::new(
            SharedLimiter::new(ledger.clone(), Limits::published(identity_protection_share))
                .with_clock(client.clock().clone()),
        );
        Arc::new(
            client
                .with_limiter(limiter)
                .with_concurrent_workers(workers)
                .with_shared_mail_slots(ledger.clone()),
        )
    }

    fn app_client(&self, app_id: &str, secret: &str, max_attempts: u32) -> Arc<GraphClient> {
        let credential = ClientCredential::Secret(SecretString::new(secret));
        Arc::new(
            bare_client(self, app_id, credential, max_attempts)
                .with_limiter(Arc::new(LocalLimiter::new(Limits::published(1.0)))),
        )
    }

    fn secret_client(&self, max_attempts: u32) -> Arc<GraphClient> {
        let secret = SecretString::new(simulator::CLIENT_SECRET);
        self.client(ClientCredential::Secret(secret), max_attempts)
    }

    fn incident_commenter(
        &self,
        graph: &Arc<GraphClient>,
        path: CommentPath,
        max_attempts: u32,
    ) -> IncidentCommenter {
        match path {
            CommentPath::Graph => IncidentCommenter::graph(graph.clone()),
            CommentPath::Arm => {
                let tokens = Arc::new(graph.tokens().with_scope(ARM_SCOPE));
                let arm = ArmClient::new(
                    reqwest::Client::new(),
                    self.arm_url(),
                    tokens,
                    quick_retry(max_attempts),
                );
                IncidentCommenter::arm(arm, graph.clone())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_policy_is_valid_report_only_and_protects_the_break_glass_account() {
        let policy = crate::cases::Policy::from_toml(POLICY).unwrap();
        assert_eq!(policy.mode, crate::cases::Mode::ReportOnly);
        assert!(
            policy
                .safety
                .protected_user_ids
                .contains(&tenant::BREAK_GLASS.0.to_owned())
        );
        assert!(policy.self_remediation.enabled);
        assert_eq!(tenant::TENANT, crate::config::DEV_TENANT_ID);
    }

    #[test]
    fn the_client_and_the_simulator_classify_directory_writes_alike() {
        // Each keeps its own list (the simulator stands for Microsoft, the limiter for our
        // reading of it); both come from the identity and access service limits.
        assert_eq!(
            crate::graph::limiter::DIRECTORY_OBJECTS,
            simulator::throttling::DIRECTORY_OBJECTS
        );
    }
}
