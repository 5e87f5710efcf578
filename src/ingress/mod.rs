//! Ingress: pure checks over request bytes and headers that turn deliveries into events.

pub mod decrypt;
pub mod entra;
pub mod graph;
pub mod jwks;
pub mod secrets;
pub mod sentinel;
pub mod sentinel_auth;
pub mod signature;
pub mod validation_tokens;
