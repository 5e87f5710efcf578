//! Support the whole crate stands on, with no knowledge of the domain: secret values and the
//! secrets document's layout, a refresh cache for remote values, AWS errors in words, logging.

pub mod aws;
pub mod cache;
pub mod seal;
pub mod secret;
pub mod telemetry;
