//! The per-store half of a sink: what an event means for the store's views.

use super::event::{Event, EventStream, Tombstone};
use crate::change::Change;

/// Turns events into changes of one store's views. Pure and synchronous: decoding, batching and
/// delivery are the runner's.
pub trait Projection: Send + Sync {
    /// The streams this projection reads; the runner subscribes to their topics by default.
    fn streams(&self) -> &[EventStream];

    /// The changes one event makes. An event the store does not keep yields no changes.
    fn project(&self, event: &Event) -> Result<Vec<Change>, ProjectError>;

    /// The changes a tombstone makes: by default none (a stream whose entities the store does
    /// not key by the record key cannot be deleted by it).
    fn tombstone(&self, tombstone: &Tombstone) -> Vec<Change> {
        let _ = tombstone;
        Vec::new()
    }
}

/// An event a projection cannot turn into changes: it goes to the dead-letter topic.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error("event `{event_type}` of aggregate `{aggregate_id}` is invalid: {reason}")]
    Invalid {
        event_type: &'static str,
        aggregate_id: String,
        reason: String,
    },
}

impl ProjectError {
    /// A projection is a pure function of the event: running it again gives the same answer.
    pub fn retriable(&self) -> bool {
        false
    }
}
