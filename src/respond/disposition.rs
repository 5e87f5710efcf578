//! What becomes of one work item: done (its case is settled, waits for a person, or is held by
//! another worker; or the signal needs no case), or kept for redelivery.

/// What became of one work item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Nothing left for this message: its case is settled, waits for a person, or is held by
    /// another worker; or the signal needs no case.
    Done(String),
    /// Keep the message: it is delivered again (and after maxReceiveCount reaches the DLQ).
    Retry(String),
}

impl Disposition {
    /// Whether the message must be kept for retry.
    pub fn is_retry(&self) -> bool {
        matches!(self, Disposition::Retry(_))
    }
}
