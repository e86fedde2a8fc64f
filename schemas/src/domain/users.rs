//! User accounts, profiles, preferences and sessions (`commands.users`, `events.users`).

use serde::{Deserialize, Serialize};

use super::{topic_payload, NotificationChannel};

/// A user's notification and shopping preferences.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preferences {
    /// Channel the user prefers to be notified on.
    pub preferred_channel: NotificationChannel,
    /// Whether the user agreed to receive marketing notifications.
    pub marketing_opt_in: bool,
    /// ISO 4217 code of the currency the user shops in.
    pub preferred_currency: String,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SessionEndReason {
    /// The user logged out.
    Logout,
    /// The session timed out.
    Expired,
}

/// Create a user account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterUser {
    /// Id of the new user, chosen by the caller so retries are idempotent.
    pub user_id: String,
    /// The user's email address.
    pub email: String,
    /// Name shown for the user.
    pub display_name: String,
    /// BCP 47 language tag of the user's locale, if known.
    pub locale: Option<String>,
}

/// Change a user's profile; `None` fields stay unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateProfile {
    /// Id of the user.
    pub user_id: String,
    /// New display name.
    pub display_name: Option<String>,
    /// New avatar URL.
    pub avatar_url: Option<String>,
    /// New BCP 47 locale.
    pub locale: Option<String>,
}

/// Replace a user's preferences.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdatePreferences {
    /// Id of the user.
    pub user_id: String,
    /// The user's new preferences.
    pub preferences: Preferences,
}

/// Open a session for a user (log in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartSession {
    /// Id of the new session, chosen by the caller.
    pub session_id: String,
    /// Id of the user.
    pub user_id: String,
    /// User agent of the client opening the session, if known.
    pub user_agent: Option<String>,
}

/// Close a user's session (log out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndSession {
    /// Id of the session to close.
    pub session_id: String,
    /// Id of the user.
    pub user_id: String,
}

/// A user account was created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRegistered {
    /// Id of the user.
    pub user_id: String,
    /// The user's email address.
    pub email: String,
    /// Name shown for the user.
    pub display_name: String,
    /// BCP 47 language tag of the user's locale, if known.
    pub locale: Option<String>,
}

/// A user's profile changed; carries the whole profile after the change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileUpdated {
    /// Id of the user.
    pub user_id: String,
    /// Display name after the change.
    pub display_name: String,
    /// Avatar URL after the change, if any.
    pub avatar_url: Option<String>,
    /// BCP 47 locale after the change, if any.
    pub locale: Option<String>,
}

/// A user's preferences were replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreferencesUpdated {
    /// Id of the user.
    pub user_id: String,
    /// The user's preferences after the change.
    pub preferences: Preferences,
}

/// A user's session was opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStarted {
    /// Id of the session.
    pub session_id: String,
    /// Id of the user.
    pub user_id: String,
    /// User agent of the client, if known.
    pub user_agent: Option<String>,
}

/// A user's session was closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEnded {
    /// Id of the session.
    pub session_id: String,
    /// Id of the user.
    pub user_id: String,
    /// Why the session ended.
    pub reason: SessionEndReason,
}

topic_payload! {
    /// Payload of `commands.users`.
    pub enum UserCommand for "commands.users" {
        RegisterUser,
        UpdateProfile,
        UpdatePreferences,
        StartSession,
        EndSession,
    }
}

topic_payload! {
    /// Payload of `events.users`. Rejected user commands go to `events.rejections`.
    pub enum UserEvent for "events.users" {
        UserRegistered,
        ProfileUpdated,
        PreferencesUpdated,
        SessionStarted,
        SessionEnded,
    }
}
