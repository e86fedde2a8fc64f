//! Commands rejected by business rules (`events.rejections`).

use serde::{Deserialize, Serialize};

use super::topic_payload;

/// Why a command was rejected. Readers that do not know a newer symbol read `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RejectionReason {
    /// A field value broke a business rule.
    ValidationFailed,
    /// The aggregate the command is about does not exist.
    NotFound,
    /// The aggregate the command would create already exists.
    AlreadyExists,
    /// The aggregate's state does not allow the command.
    InvalidState,
    /// Any other reason.
    Other,
    /// The user sent more commands than their rate allows.
    RateLimited,
}

/// A command was rejected and had no effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRejected {
    /// Topic the rejected command was read from.
    pub command_topic: String,
    /// Envelope id of the rejected command.
    pub command_id: String,
    /// Record type of the rejected command's payload, e.g. `PlaceOrder`.
    pub command_type: String,
    /// Why the command was rejected.
    pub reason: RejectionReason,
    /// Human-readable explanation of the rejection.
    pub message: String,
}

topic_payload! {
    /// Payload of `events.rejections`.
    pub enum RejectionEvent for "events.rejections" {
        CommandRejected,
    }
}
