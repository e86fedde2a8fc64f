//! Notifications rendered from templates and sent to users (`events.notifications`).

use serde::{Deserialize, Serialize};

use super::topic_payload;

/// Channel a notification is delivered through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NotificationChannel {
    /// Email.
    Email,
    /// Text message.
    Sms,
    /// Mobile push notification.
    Push,
    /// Message inside the application.
    InApp,
}

/// A notification rendered from a template was sent to a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationSent {
    /// Id of the notification.
    pub notification_id: String,
    /// Id of the user.
    pub user_id: String,
    /// Id of the template the text was rendered from.
    pub template_id: String,
    /// Channel the notification was sent on.
    pub channel: NotificationChannel,
    /// The text that was sent, after rendering the template.
    pub rendered_text: String,
}

topic_payload! {
    /// Payload of `events.notifications`.
    pub enum NotificationEvent for "events.notifications" {
        NotificationSent,
    }
}
