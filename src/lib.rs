//! risk-responder: receives Entra ID Protection risk signals (Graph change notifications,
//! Sentinel alerts), and investigates and remediates risky users.

pub mod app;
pub mod cache;
pub mod config;
pub mod event;
pub mod graph;
pub mod http;
pub mod ingress;
pub mod investigate;
pub mod ledger;
pub mod pipeline;
pub mod policy;
pub mod queue;
pub mod remediate;
pub mod replay;
pub mod secrets;
pub mod subscriptions;
pub mod telemetry;
pub mod worker;
