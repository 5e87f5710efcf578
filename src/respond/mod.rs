//! The work path: investigate, plan, remediate and record, per tenant, over the ports
//! (Graph client, ledger, password vault).

pub mod ca_policy;
pub mod investigate;
pub mod local;
pub mod notify;
pub mod pending;
pub mod remediate;
pub mod sweep;
pub mod templates;
pub mod vault;
pub mod view;
pub mod worker;
pub mod writeback;

pub use worker::{Disposition, Worker};
