//! A worker's exclusive, time-bounded hold on a record while it works on it (a case, a case's
//! incident comments).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// A worker's exclusive hold on a case while it works on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub holder: String,
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
}
