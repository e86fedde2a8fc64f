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

/// Helpers every store's projection shares.
pub mod build {
    use serde_json::Value;
    use tributary_schemas::types::{Envelope, TopicPayload};

    use super::ProjectError;
    use crate::change::{Change, Fields, Op};
    use crate::runner::event::{Tombstone, TOMBSTONE_VERSION};

    /// The object of a `json!` literal (always an object in projections; empty otherwise).
    pub fn fields(value: Value) -> Fields {
        match value {
            Value::Object(map) => map,
            _ => Fields::new(),
        }
    }

    /// A change of entity `key` of `view` made by event `e`: its version is the event's
    /// per-aggregate sequence, its time the event's.
    pub fn change<P>(e: &Envelope<P>, view: &'static str, key: &str, op: Op) -> Change {
        Change {
            view,
            key: key.to_string(),
            version: e.sequence,
            event_time_ms: e.timestamp,
            op,
        }
    }

    /// The delete a tombstone makes of entity `t.key` of `view`. Its version outranks every
    /// event's, so no replayed event brings the entity back.
    pub fn tombstone(t: &Tombstone, view: &'static str) -> Change {
        Change {
            view,
            key: t.key.clone(),
            version: TOMBSTONE_VERSION,
            event_time_ms: t.timestamp_ms,
            op: Op::Delete,
        }
    }

    /// Refuses events whose entity id is empty: they would all land on one entity.
    pub fn require_id<P: TopicPayload>(
        e: &Envelope<P>,
        id: &str,
        what: &'static str,
    ) -> Result<(), ProjectError> {
        if id.trim().is_empty() {
            return Err(ProjectError::Invalid {
                event_type: e.payload.branch_name(),
                aggregate_id: e.aggregate_id.clone(),
                reason: format!("{what} is empty"),
            });
        }
        Ok(())
    }
}
