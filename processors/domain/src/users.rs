//! The users processor: registration with a unique email, profile, preferences, sessions.
//!
//! Reads `commands.users` and writes `events.users` (keyed by user id) and `events.rejections`.
//! Three hops inside one app:
//!
//! 1. `commands.users` is checked, then forwarded unchanged to the internal `users` topic, keyed by user id
//!    with the runtime's partitioner (one user's commands stay in order).
//! 2. On the `users` topic the user's task keeps the user. A `RegisterUser` makes the user
//!    pending and sends a claim for its email to the internal `users-emails` topic, keyed by the
//!    normalized address; commands for a pending user wait in its state, in order.
//! 3. On `users-emails` the address's task grants the claim if the address is free (or already
//!    the same user's) and answers on `users`. The answer registers the user (`UserRegistered`,
//!    then the waiting commands) or rejects the registration (`AlreadyExists`) and the waiting
//!    commands (`NotFound`).
//!
//! Claims and answers are internal records in JSON, marked by the `tributary.kind` header; they
//! never leave the app. Stores: `users` (user id → [`UserState`]), `emails` (address → user id),
//! `sessions` (session id → [`Session`]), `seen` (command ids).

use serde::{Deserialize, Serialize};
use tributary_schemas::domain::{
    EndSession, Preferences, PreferencesUpdated, ProfileUpdated, RegisterUser, RejectionReason,
    SessionEndReason, SessionEnded, SessionStarted, StartSession, UpdatePreferences, UpdateProfile,
    UserCommand, UserEvent, UserRegistered,
};
use tributary_schemas::types::Envelope;
use tributary_streams::{Context, Processor, Record};

use crate::common::{first_time, load, save, Wire};
use crate::error::{ProcessorError, Result};
use crate::topics::Topics;

const USERS: &str = "users";
const EMAILS: &str = "emails";
const SESSIONS: &str = "sessions";
const KIND: &str = "tributary.kind";
const CLAIM: &[u8] = b"email-claim";
const ANSWER: &[u8] = b"email-claim-answer";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserStatus {
    /// Waiting for the email claim's answer.
    Pending,
    Registered,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserState {
    pub user_id: String,
    pub email: String,
    pub display_name: String,
    pub avatar_url: Option<String>,
    pub locale: Option<String>,
    pub preferences: Option<Preferences>,
    pub status: UserStatus,
    /// Sequence of the user's last event.
    pub sequence: i64,
    /// The `RegisterUser` record (encoded) while pending, to answer it.
    pub registration: Option<Vec<u8>>,
    /// Commands that arrived while pending (encoded), applied in order once registered.
    pub waiting: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub user_id: String,
    pub open: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claim {
    user_id: String,
    email: String,
    granted: bool,
}

fn normalize(email: &str) -> String {
    email.trim().to_lowercase()
}

#[derive(Clone)]
pub struct UsersProcessor {
    wire: Wire,
    topics: Topics,
    commands: String,
    by_id: String,
    by_email: String,
    events: String,
}

impl UsersProcessor {
    pub(crate) fn new(wire: Wire, topics: Topics) -> Self {
        UsersProcessor {
            wire,
            commands: topics.commands_users(),
            by_id: topics.users_by_id(),
            by_email: topics.users_by_email(),
            events: topics.events_users(),
            topics,
        }
    }

    pub fn inputs(topics: &Topics) -> Vec<String> {
        vec![
            topics.commands_users(),
            topics.users_by_id(),
            topics.users_by_email(),
        ]
    }

    pub fn stores() -> Vec<&'static str> {
        vec![USERS, EMAILS, SESSIONS, crate::common::SEEN]
    }

    fn reject(
        &self,
        ctx: &mut Context<'_>,
        env: &Envelope<UserCommand>,
        reason: RejectionReason,
        message: String,
    ) -> Result<()> {
        self.wire
            .reject(ctx, &self.topics, env, &self.commands, reason, message)
    }

    fn emit(
        &self,
        ctx: &mut Context<'_>,
        cause: &Envelope<UserCommand>,
        aggregate: &str,
        sequence: i64,
        user_id: &str,
        event: impl Into<UserEvent>,
    ) -> Result<()> {
        let env: Envelope<UserEvent> =
            Envelope::caused_by(cause, aggregate, event).with_sequence(sequence);
        self.wire.emit(ctx, &self.events, user_id, &env)
    }

    fn decode_bytes(&self, bytes: &[u8], what: &str) -> Result<Envelope<UserCommand>> {
        let record = Record {
            topic: self.by_id.clone(),
            partition: -1,
            offset: -1,
            timestamp: None,
            key: None,
            value: Some(bytes.to_vec()),
            headers: Vec::new(),
        };
        self.wire
            .decode::<UserCommand>(&record)
            .map_err(|e| ProcessorError::Config(format!("a stored {what} no longer decodes: {e}")))
    }

    /// Step 2: one user's commands, in order.
    fn on_user_command(&self, ctx: &mut Context<'_>, record: &Record) -> Result<()> {
        let env = self.wire.decode::<UserCommand>(record)?;
        if !first_time(ctx, &env.id)? {
            return Ok(());
        }
        let bytes = record.value.clone().unwrap_or_default();
        if let UserCommand::RegisterUser(c) = &env.payload {
            return self.register(ctx, &env, c, bytes);
        }
        let user_id = user_of(&env.payload);
        match load::<UserState>(ctx, USERS, user_id)? {
            Some(mut u) if u.status == UserStatus::Pending => {
                u.waiting.push(bytes);
                save(ctx, USERS, user_id, &u)
            }
            Some(u) => self.apply(ctx, &env, u),
            None => {
                let msg = format!("user `{user_id}` does not exist");
                self.reject(ctx, &env, RejectionReason::NotFound, msg)
            }
        }
    }

    fn register(
        &self,
        ctx: &mut Context<'_>,
        env: &Envelope<UserCommand>,
        c: &RegisterUser,
        bytes: Vec<u8>,
    ) -> Result<()> {
        let email = normalize(&c.email);
        if c.user_id.is_empty() || !email.contains('@') || c.display_name.trim().is_empty() {
            let msg = format!(
                "registration of `{}`: user id, a valid email and a display name are required",
                c.user_id
            );
            return self.reject(ctx, env, RejectionReason::ValidationFailed, msg);
        }
        if load::<UserState>(ctx, USERS, &c.user_id)?.is_some() {
            let msg = format!("user `{}` exists", c.user_id);
            return self.reject(ctx, env, RejectionReason::AlreadyExists, msg);
        }
        let u = UserState {
            user_id: c.user_id.clone(),
            email: email.clone(),
            display_name: c.display_name.clone(),
            avatar_url: None,
            locale: c.locale.clone(),
            preferences: None,
            status: UserStatus::Pending,
            sequence: 0,
            registration: Some(bytes),
            waiting: Vec::new(),
        };
        save(ctx, USERS, &u.user_id, &u)?;
        let claim = Claim {
            user_id: u.user_id.clone(),
            email: email.clone(),
            granted: false,
        };
        self.send_internal(ctx, &self.by_email, &email, CLAIM, &claim)
    }

    fn send_internal(
        &self,
        ctx: &mut Context<'_>,
        topic: &str,
        key: &str,
        kind: &[u8],
        claim: &Claim,
    ) -> Result<()> {
        let body = serde_json::to_vec(claim).map_err(|e| ProcessorError::CorruptState {
            store: EMAILS,
            key: key.to_string(),
            reason: e.to_string(),
        })?;
        ctx.forward_with_headers(
            topic,
            Some(key.as_bytes()),
            Some(&body),
            vec![(KIND.to_string(), kind.to_vec())],
        );
        Ok(())
    }

    /// Step 3: one address's claims.
    fn on_claim(&self, ctx: &mut Context<'_>, record: &Record) -> Result<()> {
        let mut claim = parse_claim(record)?;
        let owner: Option<String> = load(ctx, EMAILS, &claim.email)?;
        claim.granted = match owner {
            None => {
                save(ctx, EMAILS, &claim.email, &claim.user_id)?;
                true
            }
            Some(owner) => owner == claim.user_id,
        };
        let user_id = claim.user_id.clone();
        self.send_internal(ctx, &self.by_id, &user_id, ANSWER, &claim)
    }

    /// Step 2 again: the answer to a user's claim.
    fn on_answer(&self, ctx: &mut Context<'_>, record: &Record) -> Result<()> {
        let claim = parse_claim(record)?;
        let Some(mut u) = load::<UserState>(ctx, USERS, &claim.user_id)? else {
            return Ok(());
        };
        if u.status != UserStatus::Pending {
            return Ok(());
        }
        let Some(reg_bytes) = u.registration.take() else {
            return Ok(());
        };
        let reg = self.decode_bytes(&reg_bytes, "registration")?;
        let waiting = std::mem::take(&mut u.waiting);
        if !claim.granted {
            ctx.delete(USERS, claim.user_id.as_bytes())?;
            let msg = format!("email `{}` belongs to another user", claim.email);
            self.reject(ctx, &reg, RejectionReason::AlreadyExists, msg)?;
            for bytes in waiting {
                let env = self.decode_bytes(&bytes, "waiting command")?;
                let msg = format!("user `{}` was not registered", claim.user_id);
                self.reject(ctx, &env, RejectionReason::NotFound, msg)?;
            }
            return Ok(());
        }
        u.status = UserStatus::Registered;
        u.sequence = 1;
        let event = UserRegistered {
            user_id: u.user_id.clone(),
            email: u.email.clone(),
            display_name: u.display_name.clone(),
            locale: u.locale.clone(),
        };
        let user_id = u.user_id.clone();
        self.emit(ctx, &reg, &user_id, 1, &user_id, event)?;

        for bytes in waiting {
            let env = self.decode_bytes(&bytes, "waiting command")?;
            u = self.apply_to(ctx, &env, u)?;
        }
        save(ctx, USERS, &user_id, &u)
    }

    fn apply(
        &self,
        ctx: &mut Context<'_>,
        env: &Envelope<UserCommand>,
        u: UserState,
    ) -> Result<()> {
        let u = self.apply_to(ctx, env, u)?;
        let id = u.user_id.clone();
        save(ctx, USERS, &id, &u)
    }

    /// Applies a command to a registered user; returns the user after it.
    fn apply_to(
        &self,
        ctx: &mut Context<'_>,
        env: &Envelope<UserCommand>,
        mut u: UserState,
    ) -> Result<UserState> {
        match &env.payload {
            UserCommand::RegisterUser(_) => {
                let msg = format!("user `{}` exists", u.user_id);
                self.reject(ctx, env, RejectionReason::AlreadyExists, msg)?;
            }
            UserCommand::UpdateProfile(c) => self.update_profile(ctx, env, &mut u, c)?,
            UserCommand::UpdatePreferences(c) => self.update_preferences(ctx, env, &mut u, c)?,
            UserCommand::StartSession(c) => self.start_session(ctx, env, &u, c)?,
            UserCommand::EndSession(c) => self.end_session(ctx, env, &u, c)?,
        }
        Ok(u)
    }

    fn update_profile(
        &self,
        ctx: &mut Context<'_>,
        env: &Envelope<UserCommand>,
        u: &mut UserState,
        c: &UpdateProfile,
    ) -> Result<()> {
        if let Some(v) = &c.display_name {
            if v.trim().is_empty() {
                let msg = "display name must not be empty".to_string();
                return self.reject(ctx, env, RejectionReason::ValidationFailed, msg);
            }
            u.display_name = v.clone();
        }
        if let Some(v) = &c.avatar_url {
            u.avatar_url = Some(v.clone());
        }
        if let Some(v) = &c.locale {
            u.locale = Some(v.clone());
        }
        u.sequence += 1;
        let event = ProfileUpdated {
            user_id: u.user_id.clone(),
            display_name: u.display_name.clone(),
            avatar_url: u.avatar_url.clone(),
            locale: u.locale.clone(),
        };
        self.emit(ctx, env, &u.user_id, u.sequence, &u.user_id, event)
    }

    fn update_preferences(
        &self,
        ctx: &mut Context<'_>,
        env: &Envelope<UserCommand>,
        u: &mut UserState,
        c: &UpdatePreferences,
    ) -> Result<()> {
        u.preferences = Some(c.preferences.clone());
        u.sequence += 1;
        let event = PreferencesUpdated {
            user_id: u.user_id.clone(),
            preferences: c.preferences.clone(),
        };
        self.emit(ctx, env, &u.user_id, u.sequence, &u.user_id, event)
    }

    fn start_session(
        &self,
        ctx: &mut Context<'_>,
        env: &Envelope<UserCommand>,
        u: &UserState,
        c: &StartSession,
    ) -> Result<()> {
        if load::<Session>(ctx, SESSIONS, &c.session_id)?.is_some() {
            let msg = format!("session `{}` exists", c.session_id);
            return self.reject(ctx, env, RejectionReason::AlreadyExists, msg);
        }
        let s = Session {
            user_id: u.user_id.clone(),
            open: true,
        };
        save(ctx, SESSIONS, &c.session_id, &s)?;
        let event = SessionStarted {
            session_id: c.session_id.clone(),
            user_id: u.user_id.clone(),
            user_agent: c.user_agent.clone(),
        };
        self.emit(ctx, env, &c.session_id, 1, &u.user_id, event)
    }

    fn end_session(
        &self,
        ctx: &mut Context<'_>,
        env: &Envelope<UserCommand>,
        u: &UserState,
        c: &EndSession,
    ) -> Result<()> {
        match load::<Session>(ctx, SESSIONS, &c.session_id)? {
            Some(s) if s.open && s.user_id == u.user_id => {
                save(
                    ctx,
                    SESSIONS,
                    &c.session_id,
                    &Session {
                        user_id: s.user_id,
                        open: false,
                    },
                )?;
                let event = SessionEnded {
                    session_id: c.session_id.clone(),
                    user_id: u.user_id.clone(),
                    reason: SessionEndReason::Logout,
                };
                self.emit(ctx, env, &c.session_id, 2, &u.user_id, event)
            }
            _ => {
                let msg = format!(
                    "session `{}` is not an open session of `{}`",
                    c.session_id, u.user_id
                );
                self.reject(ctx, env, RejectionReason::InvalidState, msg)
            }
        }
    }
}

fn user_of(c: &UserCommand) -> &str {
    match c {
        UserCommand::RegisterUser(c) => &c.user_id,
        UserCommand::UpdateProfile(c) => &c.user_id,
        UserCommand::UpdatePreferences(c) => &c.user_id,
        UserCommand::StartSession(c) => &c.user_id,
        UserCommand::EndSession(c) => &c.user_id,
    }
}

fn parse_claim(record: &Record) -> Result<Claim> {
    let bytes = record
        .value
        .as_deref()
        .ok_or_else(|| ProcessorError::NoValue(record.id()))?;
    serde_json::from_slice(bytes).map_err(|e| ProcessorError::CorruptState {
        store: EMAILS,
        key: record.id(),
        reason: format!("internal claim record: {e}"),
    })
}

impl Processor for UsersProcessor {
    fn process(&mut self, ctx: &mut Context<'_>, record: Record) -> tributary_streams::Result<()> {
        let t = record.topic.as_str();
        if t == self.commands {
            // The first hop: checked (framing, schema), so a malformed command is dead-lettered
            // at the producer's coordinates; then by user id, with the runtime's partitioner and
            // the producer's coordinates in its headers. The key is the user id for every
            // command of the topic (its aggregate id).
            let _: Envelope<UserCommand> = self.wire.decode(&record)?;
            ctx.repartition(&self.by_id, record.key.as_deref(), record.value.as_deref());
            return Ok(());
        }
        let r = if t == self.by_email {
            self.on_claim(ctx, &record)
        } else if t == self.by_id {
            if record.header(KIND) == Some(ANSWER) {
                self.on_answer(ctx, &record)
            } else {
                self.on_user_command(ctx, &record)
            }
        } else {
            Err(ProcessorError::UnexpectedTopic(record.id()))
        };
        Ok(r?)
    }
}
