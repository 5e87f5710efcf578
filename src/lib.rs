//! risk-responder: receives Entra ID Protection risk signals (Graph change notifications,
//! Sentinel alerts), and investigates and remediates risky users.

pub mod actions;
pub mod app;
pub mod cases;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod event;
pub mod graph;
pub mod http;
pub mod ingress;
pub mod ledger;
pub mod queue;
pub mod replay;
pub mod respond;
pub mod support;
pub mod vault;
