//! The work path: investigate, plan, remediate and record, per tenant, over the ports
//! (Graph client, ledger, password vault).

pub mod blast_radius;
pub mod ca_policy;
pub mod decide;
pub mod disposition;
pub mod intake;
pub mod investigate;
pub mod local;
pub mod merge;
pub mod pending;
pub mod prepare;
pub mod remediate;
pub mod report;
pub mod run;
pub mod subscriptions;
pub mod sweep;
pub mod view;
pub mod worker;
pub mod writeback;

pub use worker::{Disposition, Worker};
