//! What every processor of the crate shares: decoding and encoding on the runtime's thread,
//! JSON state in the runtime's stores, command de-duplication, rejections, the clock.

use std::future::Future;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tributary_schemas::domain::{CommandRejected, RejectionEvent, RejectionReason};
use tributary_schemas::types::{Envelope, TopicPayload};
use tributary_schemas::Codec;
use tributary_streams::{Context, Record};

use crate::error::{ProcessorError, Result};
use crate::topics::Topics;

/// The store of envelope ids already handled, per processor. Commands and events can arrive
/// twice (a producer retry, a redelivery after a crash, a repartition hop replayed), and
/// remembering ids makes the second arrival a no-op before any state is looked at.
pub(crate) const SEEN: &str = "seen";

/// Runs an async codec call on the runtime's engine thread. The engine runs on a tokio blocking
/// thread, where blocking on the handle is allowed; the codec caches schemas by id, so after the
/// first record of a schema this does not leave the process.
fn block_on<F: Future>(f: F) -> Result<F::Output> {
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|e| ProcessorError::Config(format!("no tokio runtime: {e}")))?;
    Ok(handle.block_on(f))
}

/// The codec, shared by every task of a processor.
#[derive(Clone)]
pub(crate) struct Wire {
    codec: Arc<Codec>,
}

impl Wire {
    pub(crate) fn new(codec: Arc<Codec>) -> Self {
        Wire { codec }
    }

    pub(crate) fn decode<P>(&self, record: &Record) -> Result<Envelope<P>>
    where
        P: TopicPayload,
    {
        let bytes = record
            .value
            .as_deref()
            .ok_or_else(|| ProcessorError::NoValue(record.id()))?;
        block_on(self.codec.decode::<Envelope<P>>(bytes))?.map_err(|source| {
            ProcessorError::Decode {
                record: record.id(),
                source,
            }
        })
    }

    pub(crate) fn encode<P>(&self, env: &Envelope<P>) -> Result<Vec<u8>>
    where
        P: TopicPayload,
    {
        block_on(self.codec.encode(env))?.map_err(|source| ProcessorError::Encode {
            topic: P::TOPIC,
            source,
        })
    }

    /// Encodes `env` and forwards it to `topic` keyed by `key`. The schema is registered under
    /// the canonical subject (`events.orders-value`, ...) whatever the topic prefix: the id in
    /// the bytes is all a reader needs.
    pub(crate) fn emit<P>(
        &self,
        ctx: &mut Context<'_>,
        topic: &str,
        key: &str,
        env: &Envelope<P>,
    ) -> Result<()>
    where
        P: TopicPayload,
    {
        let bytes = self.encode(env)?;
        ctx.forward(topic, Some(key.as_bytes()), Some(&bytes));
        Ok(())
    }

    /// Emits a `CommandRejected` on `events.rejections`, keyed and identified by the command.
    pub(crate) fn reject<P>(
        &self,
        ctx: &mut Context<'_>,
        topics: &Topics,
        command: &Envelope<P>,
        command_topic: &str,
        reason: RejectionReason,
        message: String,
    ) -> Result<()>
    where
        P: TopicPayload,
    {
        tracing::info!(command = %command.id, kind = command.payload.branch_name(), %message, "command rejected");
        let rejected = CommandRejected {
            command_topic: command_topic.to_string(),
            command_id: command.id.clone(),
            command_type: command.payload.branch_name().to_string(),
            reason,
            message,
        };
        // Each rejection is its own aggregate (the command), so sequence 1 is its only version.
        let reason_name = format!("{reason:?}");
        let env: Envelope<RejectionEvent> =
            Envelope::caused_by(command, command.id.clone(), rejected).with_sequence(1);
        self.emit(
            ctx,
            &topics.events_rejections(),
            &command.aggregate_id,
            &env,
        )?;
        // The command itself goes to its producer's dead-letter topic too, bytes untouched,
        // with the runtime's dead-letter headers (the producer's partition, offset and key,
        // whichever hop refused it), so an operator finds every refused input in one place.
        let extra = vec![(
            tributary_runtime::dlq::REJECTION_REASON.to_string(),
            reason_name.into_bytes(),
        )];
        let message = env_message(&env);
        // The record being processed is the command itself (straight from its topic or
        // through a hop) unless the command was held and is refused on another record's
        // arrival (a registration refused on its email claim's answer).
        let input_is_command = ctx.input_origin().is_some_and(|o| o.topic == command_topic);
        if !(input_is_command
            && ctx.dead_letter(
                tributary_runtime::dlq::REJECTED_CLASS,
                &message,
                extra.clone(),
            ))
        {
            // The command as the processor kept it: its producer's partition and offset are
            // not known here any more, its topic and the refusing group are.
            let bytes = self.encode(command)?;
            let mut headers = extra;
            headers.push((
                tributary_runtime::dlq::SOURCE_TOPIC.into(),
                command_topic.as_bytes().to_vec(),
            ));
            headers.push((
                tributary_runtime::dlq::CONSUMER_GROUP.into(),
                ctx.application_id().as_bytes().to_vec(),
            ));
            headers.push((
                tributary_runtime::dlq::ERROR_CLASS.into(),
                tributary_runtime::dlq::REJECTED_CLASS.as_bytes().to_vec(),
            ));
            headers.push((
                tributary_runtime::dlq::ERROR_MESSAGE.into(),
                message.into_bytes(),
            ));
            ctx.forward_with_headers(
                &tributary_runtime::dlq::dlq_topic(command_topic),
                Some(command.aggregate_id.as_bytes()),
                Some(&bytes),
                headers,
            );
        }
        Ok(())
    }
}

fn env_message(env: &Envelope<RejectionEvent>) -> String {
    let RejectionEvent::CommandRejected(r) = &env.payload;
    r.message.clone()
}

/// Reads a JSON value of `store`.
pub(crate) fn load<T: DeserializeOwned>(
    ctx: &Context<'_>,
    store: &'static str,
    key: &str,
) -> Result<Option<T>> {
    match ctx.get(store, key.as_bytes())? {
        None => Ok(None),
        Some(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| ProcessorError::CorruptState {
                    store,
                    key: key.to_string(),
                    reason: e.to_string(),
                })
        }
    }
}

/// Writes a JSON value to `store`.
pub(crate) fn save<T: Serialize>(
    ctx: &mut Context<'_>,
    store: &'static str,
    key: &str,
    value: &T,
) -> Result<()> {
    let bytes = serde_json::to_vec(value).map_err(|e| ProcessorError::CorruptState {
        store,
        key: key.to_string(),
        reason: e.to_string(),
    })?;
    ctx.put(store, key.as_bytes(), &bytes)?;
    Ok(())
}

/// Whether `id` was recorded as handled, without recording it.
pub(crate) fn handled_before(ctx: &Context<'_>, id: &str) -> Result<bool> {
    Ok(ctx.get(SEEN, id.as_bytes())?.is_some())
}

/// Records `id` as handled; false when it was handled before.
pub(crate) fn first_time(ctx: &mut Context<'_>, id: &str) -> Result<bool> {
    if ctx.get(SEEN, id.as_bytes())?.is_some() {
        return Ok(false);
    }
    ctx.put(SEEN, id.as_bytes(), &[])?;
    Ok(true)
}

/// A count kept as i64 in state, as the i32 the schemas carry. Stock never comes near the i32
/// range in practice; saturating keeps a pathological count from wrapping negative.
pub(crate) fn to_i32(n: i64) -> i32 {
    i32::try_from(n).unwrap_or(if n < 0 { i32::MIN } else { i32::MAX })
}
