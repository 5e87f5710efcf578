//! The domain core, without I/O: signals become cases, one per (tenant, user, risk episode);
//! a case is planned once by policy and safety rails, then only escalated; every action's state
//! and every person's decision is recorded on it.

pub mod case;
pub mod comment;
pub mod decision;
pub mod episode;
pub mod findings;
pub mod incident;
pub mod lease;
pub mod plan;
pub mod policy;

pub use case::{ActionState, Case, CaseAction, CaseStatus, Episode, NextActor, SignalRef};
pub use episode::{Placement, place};
pub use findings::{Findings, RiskRecord, SignInBrief, SignInSummary, UserFacts};
pub use policy::{Action, Mode, Policy};
