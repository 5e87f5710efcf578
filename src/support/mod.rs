//! Support the whole crate stands on, with no knowledge of the domain: secret values and the
//! secrets document's layout, a refresh cache for remote values, AWS errors in words, logging,
//! sealing, and the service's clock as its `Date` headers tell it.

pub mod aws;
pub mod cache;
pub mod clock;
pub mod metrics;
pub mod process;
pub mod seal;
pub mod secret;
pub mod telemetry;

/// Whether `value` is a GUID in its usual form (`8-4-4-4-12` hex digits): an Entra object
/// id, tenant id or application id.
pub fn is_guid(value: &str) -> bool {
    value.len() == 36
        && value.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}
