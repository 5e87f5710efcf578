//! risk-responder: receives Entra ID Protection risk signals (Graph change notifications,
//! Sentinel alerts), and investigates and remediates risky users.

pub mod config;
pub mod event;
pub mod http;
pub mod ingress;
pub mod queue;
pub mod replay;
pub mod secrets;
pub mod telemetry;
