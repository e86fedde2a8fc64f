//! The Confluent wire format: `0x00` magic byte, the writer schema's registry id as a big-endian
//! `u32`, then the Avro binary datum.
//!
//! Encoding goes through `schema_registry_converter`'s [`AvroEncoder`], which registers the
//! topic's schema under `<topic>-value` (TopicNameStrategy) once and caches the id.
//!
//! Decoding checks the header itself (length, magic byte) before anything else, asks the
//! converter's [`AvroDecoder`] for the writer schema (cached per id), and then decodes in two
//! steps so every failure has its own error: the datum against the writer schema (a failure there
//! means the bytes are truncated or corrupt), then resolution into the reader schema (a failure
//! there means the two schemas do not match). Resolution matches union branches by name (see
//! `resolve.rs` for why apache-avro's own is not used). Nothing in here panics on input.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::types::Value;
use apache_avro::Schema;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};

use crate::registry_auth::RegistryEndpoint;
use crate::resolve::{resolve, Named};
use crate::types::{AvroRecord, DomainError};

/// Magic byte that opens every record in the Confluent wire format.
pub const MAGIC_BYTE: u8 = 0;
/// Magic byte plus the 4-byte schema id.
pub const HEADER_LEN: usize = 5;
/// The largest single allocation a datum may ask for while decoding. A corrupt length prefix must
/// produce an error, not an attempt to allocate gigabytes. Kafka's default record limit is 1 MiB.
pub const MAX_ALLOCATION_BYTES: usize = 16 * 1024 * 1024;

/// Why a record could not be encoded or decoded. [`CodecError::retriable`] says whether trying the
/// same record again later can succeed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("record of {len} bytes is shorter than the 5-byte Confluent header (magic byte + schema id)")]
    TooShort { len: usize },
    #[error("record starts with byte {found:#04x}, not the Confluent magic byte 0x00")]
    WrongMagicByte { found: u8 },
    #[error("schema id {id} is not known to the schema registry")]
    UnknownSchemaId { id: u32 },
    /// An id the registry does not know (yet): within the codec's grace period (see
    /// [`Codec::with_unknown_schema_grace`]) this is retried, since a registry that failed over
    /// to a replica still reading `_schemas` answers 404 for ids the old one handed out.
    #[error("schema id {id} is not known to the schema registry yet (unknown for {unknown_for:?}; dead-lettered after {grace:?})")]
    UnknownSchemaIdInGrace {
        id: u32,
        unknown_for: Duration,
        grace: Duration,
    },
    #[error("schema registry unavailable while {doing}: {reason}")]
    RegistryUnavailable { doing: String, reason: String },
    #[error("schema registry refused {doing}: {reason}")]
    Registry { doing: String, reason: String },
    #[error("datum written with schema id {id} is truncated or corrupt: {reason}")]
    CorruptDatum { id: u32, reason: String },
    #[error("datum written with schema id {id} is followed by {extra} unexpected bytes")]
    TrailingBytes { id: u32, extra: usize },
    #[error("data written with schema id {id} cannot be read as `{reader}`: {reason}")]
    SchemaMismatch {
        id: u32,
        reader: String,
        reason: String,
    },
    #[error("encoding a record for topic `{topic}` failed: {reason}")]
    Encode { topic: String, reason: String },
    #[error(transparent)]
    Domain(#[from] DomainError),
}

impl CodecError {
    /// An unreachable registry, or an id unknown for less than the grace period, is worth a
    /// retry; every other error is a property of the record (or of the schemas) and belongs in
    /// a dead-letter topic.
    pub fn retriable(&self) -> bool {
        matches!(
            self,
            CodecError::RegistryUnavailable { .. } | CodecError::UnknownSchemaIdInGrace { .. }
        )
    }
}

/// A decoded record: the writer schema's id and the datum resolved into the reader schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub schema_id: u32,
    pub value: Value,
}

/// Splits a record into its schema id and Avro body, checking length and magic byte.
pub fn split_header(bytes: &[u8]) -> Result<(u32, &[u8]), CodecError> {
    if bytes.len() < HEADER_LEN {
        return Err(CodecError::TooShort { len: bytes.len() });
    }
    if bytes[0] != MAGIC_BYTE {
        return Err(CodecError::WrongMagicByte { found: bytes[0] });
    }
    let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    Ok((id, &bytes[HEADER_LEN..]))
}

/// Frames an Avro body with the Confluent header.
pub fn frame(schema_id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.push(MAGIC_BYTE);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The subject of a topic's values under TopicNameStrategy.
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

/// What decoding data of one writer schema needs, prepared once per schema id: the parsed
/// schema, a datum reader with its named types resolved, and the named types for resolution.
///
/// The plan is leaked to borrow the schema for `'static` (the datum reader borrows it): one
/// allocation per schema id the process ever reads, a number the registry bounds. Building the
/// reader per record instead costs more than decoding the record.
struct WriterPlan {
    schema: &'static Schema,
    reader: GenericDatumReader<'static>,
    names: Named<'static>,
}

/// A reader schema with its named types resolved once.
enum Reader<'r> {
    /// A schema that lives for the whole program (a domain type's), cached by its address.
    Static(&'static Schema),
    /// Any other schema: prepared again on each call.
    Borrowed(&'r Schema),
}

/// Encoder and decoder bound to one schema registry. Cheap to share behind an `Arc`; all
/// lookups are cached.
pub struct Codec {
    encoder: AvroEncoder,
    decoder: AvroDecoder,
    writers: Mutex<HashMap<u32, &'static WriterPlan>>,
    /// Named types of `'static` reader schemas, keyed by the schema's address.
    readers: Mutex<HashMap<usize, &'static Named<'static>>>,
    /// Whether writer schema `id` can be read with a `'static` reader schema: checked once per
    /// pair, since the answer never changes for registered schemas.
    verdicts: Mutex<HashMap<(u32, usize), Result<Same, String>>>,
    /// How long an id the registry answers 404 for counts as not yet known (retriable) rather
    /// than unknown (dead-lettered).
    unknown_grace: Duration,
    /// When each id still unknown was first answered 404; an id leaves once the registry knows
    /// it. Bounded by the ids found in records, at most one entry each.
    unknown_since: Mutex<HashMap<u32, Instant>>,
}

/// The default of [`Codec::with_unknown_schema_grace`].
pub const DEFAULT_UNKNOWN_SCHEMA_GRACE: Duration = Duration::from_secs(60);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Codec {
    /// A codec for the registry at `registry_url`, with basic-auth credentials from the URL's
    /// userinfo, if any (see [`crate::registry_auth`]).
    pub fn new(registry_url: &str) -> Codec {
        Codec::with_endpoint(&RegistryEndpoint::parse(registry_url, None))
    }

    /// A codec for `endpoint`, its credentials as given.
    pub fn with_endpoint(endpoint: &RegistryEndpoint) -> Codec {
        static LIMIT: OnceLock<usize> = OnceLock::new();
        LIMIT.get_or_init(|| apache_avro::util::max_allocation_bytes(MAX_ALLOCATION_BYTES));
        let settings = endpoint.settings();
        Codec {
            encoder: AvroEncoder::new(settings.clone()),
            decoder: AvroDecoder::new(settings),
            writers: Mutex::new(HashMap::new()),
            readers: Mutex::new(HashMap::new()),
            verdicts: Mutex::new(HashMap::new()),
            unknown_grace: DEFAULT_UNKNOWN_SCHEMA_GRACE,
            unknown_since: Mutex::new(HashMap::new()),
        }
    }

    /// How long a schema id the registry does not know is retried before records that use it
    /// are dead-lettered (default [`DEFAULT_UNKNOWN_SCHEMA_GRACE`]; zero dead-letters at once).
    /// The clock starts at the first 404 for the id in this process; once the grace is over,
    /// later records with the id dead-letter without waiting, until the registry knows it.
    pub fn with_unknown_schema_grace(mut self, grace: Duration) -> Codec {
        self.unknown_grace = grace;
        self
    }

    /// Encodes `value` for `topic` with `schema_text`, registering the schema under
    /// `<topic>-value` on first use. A codec keeps the first schema it registered for a subject
    /// (the converter caches per subject): one topic, one schema per codec.
    pub async fn encode_value(
        &self,
        topic: &str,
        schema_text: &str,
        value: Value,
    ) -> Result<Vec<u8>, CodecError> {
        let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
            topic.to_string(),
            false,
            SuppliedSchema::new(None, SchemaType::Avro, schema_text.to_string()),
        );
        self.encoder
            .encode_value(value, &strategy)
            .await
            .map_err(|e| {
                // The converter caches failures per subject; forget them so that a registry that
                // comes back, or a fixed compatibility level, is seen on the next call.
                self.encoder.remove_errors_from_cache();
                classify_encode(topic, e)
            })
    }

    /// Encodes a domain record for its own topic.
    pub async fn encode<T: AvroRecord>(&self, record: &T) -> Result<Vec<u8>, CodecError> {
        let value = record.to_avro()?;
        self.encode_value(T::TOPIC, T::SCHEMA_TEXT, value).await
    }

    /// Decodes a record into the writer schema's own shape, or into `reader` when given.
    pub async fn decode_value(
        &self,
        bytes: &[u8],
        reader: Option<&Schema>,
    ) -> Result<Decoded, CodecError> {
        self.decode_with(bytes, reader.map(Reader::Borrowed)).await
    }

    /// Decodes a domain record, reading whatever compatible schema it was written with as `T`'s.
    pub async fn decode<T: AvroRecord>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        let decoded = self
            .decode_with(bytes, Some(Reader::Static(T::schema())))
            .await?;
        Ok(T::from_avro(decoded.value)?)
    }

    async fn decode_with(
        &self,
        bytes: &[u8],
        reader: Option<Reader<'_>>,
    ) -> Result<Decoded, CodecError> {
        let (id, mut body) = split_header(bytes)?;
        let plan = self.writer_plan(id).await?;
        let value = plan
            .reader
            .read_value(&mut body)
            .map_err(|e| CodecError::CorruptDatum {
                id,
                reason: e.to_string(),
            })?;
        if !body.is_empty() {
            return Err(CodecError::TrailingBytes {
                id,
                extra: body.len(),
            });
        }
        let Some(reader) = reader else {
            return Ok(Decoded {
                schema_id: id,
                value,
            });
        };
        let schema = match reader {
            Reader::Static(s) => s,
            Reader::Borrowed(s) => s,
        };
        let mismatch = |reason: String| CodecError::SchemaMismatch {
            id,
            reader: schema_name(schema),
            reason,
        };
        let value = match reader {
            Reader::Static(r) => {
                let key = (id, r as *const Schema as usize);
                let verdict = lock(&self.verdicts)
                    .entry(key)
                    .or_insert_with(|| readable(plan.schema, r))
                    .clone();
                if verdict.map_err(mismatch)? == Same::Yes {
                    // Written with the reader's own schema (the common case): already in shape.
                    return Ok(Decoded {
                        schema_id: id,
                        value,
                    });
                }
                let names = self.reader_names(r).map_err(mismatch)?;
                resolve(value, plan.schema, r, &plan.names, names)
            }
            Reader::Borrowed(r) => {
                if readable(plan.schema, r).map_err(mismatch)? == Same::Yes {
                    return Ok(Decoded {
                        schema_id: id,
                        value,
                    });
                }
                let names = Named::of(r).map_err(mismatch)?;
                resolve(value, plan.schema, r, &plan.names, &names)
            }
        }
        .map_err(mismatch)?;
        Ok(Decoded {
            schema_id: id,
            value,
        })
    }

    async fn writer_plan(&self, id: u32) -> Result<&'static WriterPlan, CodecError> {
        if let Some(plan) = lock(&self.writers).get(&id) {
            return Ok(plan);
        }
        let registered = match self.decoder.get_schema(id).await {
            Ok(registered) => {
                lock(&self.unknown_since).remove(&id);
                registered
            }
            Err(e) => {
                self.decoder.remove_errors_from_cache();
                return Err(self.within_grace(classify_lookup(id, e)));
            }
        };
        let invalid = |reason: String| CodecError::Registry {
            doing: format!("preparing schema id {id}"),
            reason,
        };
        let schema: &'static Schema = Box::leak(Box::new(registered.parsed.clone()));
        let reader = GenericDatumReader::builder(schema)
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        let names = Named::of(schema).map_err(invalid)?;
        let mut writers = lock(&self.writers);
        // Another task may have prepared it meanwhile; keep the first (the leak stays bounded).
        Ok(*writers.entry(id).or_insert_with(|| {
            Box::leak(Box::new(WriterPlan {
                schema,
                reader,
                names,
            }))
        }))
    }

    /// Turns an unknown id into [`CodecError::UnknownSchemaIdInGrace`] while its grace lasts.
    fn within_grace(&self, e: CodecError) -> CodecError {
        let CodecError::UnknownSchemaId { id } = e else {
            return e;
        };
        let now = Instant::now();
        let since = *lock(&self.unknown_since).entry(id).or_insert(now);
        let unknown_for = now.saturating_duration_since(since);
        if unknown_for < self.unknown_grace {
            CodecError::UnknownSchemaIdInGrace {
                id,
                unknown_for,
                grace: self.unknown_grace,
            }
        } else {
            e
        }
    }

    fn reader_names(&self, reader: &'static Schema) -> Result<&'static Named<'static>, String> {
        let key = reader as *const Schema as usize;
        if let Some(names) = lock(&self.readers).get(&key) {
            return Ok(names);
        }
        let names: &'static Named<'static> = Box::leak(Box::new(Named::of(reader)?));
        Ok(*lock(&self.readers).entry(key).or_insert(names))
    }
}

/// Whether a writer schema is exactly the reader's, so decoded values need no resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Same {
    Yes,
    No,
}

/// Whether data written with `writer` may be read with `reader`. `Partial` (e.g. the writer has
/// a union branch the reader lacks) may still read a given datum; resolution reports the records
/// that cannot be read. Identity is decided on the full JSON form (logical types, defaults and
/// all), not on Avro's canonical form, which drops some of them.
fn readable(writer: &Schema, reader: &Schema) -> Result<Same, String> {
    SchemaCompatibility::can_read(writer, reader).map_err(|e| e.to_string())?;
    let same = match (serde_json::to_string(writer), serde_json::to_string(reader)) {
        (Ok(w), Ok(r)) if w == r => Same::Yes,
        _ => Same::No,
    };
    Ok(same)
}

fn schema_name(schema: &Schema) -> String {
    match schema {
        Schema::Record(r) => r.name.fullname(None),
        other => format!("{:?}", apache_avro::schema::SchemaKind::from(other)),
    }
}

fn describe(e: &SRCError) -> String {
    match &e.cause {
        Some(cause) => format!("{} ({cause})", e.error),
        None => e.error.clone(),
    }
}

fn classify_lookup(id: u32, e: SRCError) -> CodecError {
    let text = describe(&e);
    // Confluent answers 404 with error_code 40403 for an id it has never handed out.
    if text.contains("40403") || text.contains("status 404") {
        CodecError::UnknownSchemaId { id }
    } else if e.retriable || is_connect_failure(&text) {
        CodecError::RegistryUnavailable {
            doing: format!("looking up schema id {id}"),
            reason: text,
        }
    } else {
        CodecError::Registry {
            doing: format!("looking up schema id {id}"),
            reason: text,
        }
    }
}

fn classify_encode(topic: &str, e: SRCError) -> CodecError {
    let text = describe(&e);
    let doing = format!("registering the schema of `{}`", value_subject(topic));
    if e.retriable || is_connect_failure(&text) {
        CodecError::RegistryUnavailable {
            doing,
            reason: text,
        }
    } else if text.contains("HTTP request to schema registry failed") {
        CodecError::Registry {
            doing,
            reason: text,
        }
    } else {
        // Everything else the encoder reports is about the value not fitting the schema.
        CodecError::Encode {
            topic: topic.to_string(),
            reason: text,
        }
    }
}

/// The converter reports connection failures as non-retriable reqwest errors; they are the
/// clearest case of a retriable condition, so recognise them.
fn is_connect_failure(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("error sending request") || t.contains("connect") || t.contains("timed out")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_checks() {
        assert!(matches!(
            split_header(&[]),
            Err(CodecError::TooShort { len: 0 })
        ));
        assert!(matches!(
            split_header(&[0, 0, 0, 1]),
            Err(CodecError::TooShort { len: 4 })
        ));
        assert!(matches!(
            split_header(&[1, 0, 0, 0, 7, 2]),
            Err(CodecError::WrongMagicByte { found: 1 })
        ));
        let framed = frame(0x01020304, &[9, 8]);
        let (id, body) = split_header(&framed).unwrap();
        assert_eq!(id, 0x01020304);
        assert_eq!(body, &[9, 8]);
    }
}
