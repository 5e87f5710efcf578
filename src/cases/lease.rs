//! A worker's exclusive, time-bounded hold on a record while it works on it (a case, a case's
//! incident comments).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::support::clock::SKEW_ALLOWANCE;
pub use crate::support::process::{holder_id, holder_is_gone};

/// A worker's exclusive hold on a case while it works on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub holder: String,
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
}

/// The longest any lease is taken for (a case's: 15 minutes). A lease ending later than this
/// plus [`SKEW_ALLOWANCE`] from now was written by a host whose clock was ahead, and holds
/// nothing: it would strand the case until that host's clock came round.
pub const LONGEST_LEASE: time::Duration = time::Duration::minutes(15);

impl Lease {
    /// Whether the lease holds at `now`: not run out, not further ahead than any lease taken
    /// by a host in step with Graph's clock could end, and not held by a local process that is
    /// gone (killed, or the host restarted).
    pub fn is_held(&self, now: OffsetDateTime) -> bool {
        self.until > now
            && self.until <= now + LONGEST_LEASE + SKEW_ALLOWANCE
            && !holder_is_gone(&self.holder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_from_a_fast_clock_holds_nothing() {
        let now = OffsetDateTime::now_utc();
        let lease = |minutes| Lease {
            holder: "w".into(),
            until: now + time::Duration::minutes(minutes),
        };
        assert!(lease(15).is_held(now));
        assert!(!lease(-1).is_held(now), "ran out");
        assert!(!lease(135).is_held(now), "written two hours ahead");
    }

    #[test]
    fn a_lease_of_a_process_that_is_gone_holds_nothing() {
        let now = OffsetDateTime::now_utc();
        let until = now + time::Duration::minutes(10);
        let mine = holder_id(true);
        assert!(
            Lease {
                holder: mine.clone(),
                until
            }
            .is_held(now)
        );
        let Some(fields) = mine.strip_prefix("local:") else {
            return; // no /proc here: only time ends leases
        };
        let parts: Vec<&str> = fields.split(':').collect();
        // This host, this boot, a pid that does not run (past Linux's largest).
        let gone = format!("local:{}:{}:4194305:1:x", parts[0], parts[1]);
        assert!(
            !Lease {
                holder: gone,
                until
            }
            .is_held(now)
        );
    }
}
