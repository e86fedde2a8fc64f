//! The wire codec against a real schema registry (started in-process on its own `_schemas` topic
//! of the real broker): round trips, schema evolution, and every kind of malformed input.

use std::net::SocketAddr;

use apache_avro::types::Value;
use apache_avro::Schema;
use tributary_registry::{Compatibility, RegistryConfig, RunningRegistry};
use tributary_runtime::config::KAFKA_BROKERS;
use tributary_runtime::kafka::unique_name;
use tributary_schemas::codec::{frame, split_header, Codec, CodecError};

const V1: &str = r#"{"type":"record","name":"Probe","namespace":"test.codec","fields":[
  {"name":"id","type":"string"},
  {"name":"count","type":"long"}
]}"#;

/// V1 plus a field with a default: a BACKWARD-compatible change.
const V2: &str = r#"{"type":"record","name":"Probe","namespace":"test.codec","fields":[
  {"name":"id","type":"string"},
  {"name":"count","type":"long"},
  {"name":"note","type":"string","default":"none"}
]}"#;

/// `count` as a string: data written with V1 cannot be read with this.
const CLASHING: &str = r#"{"type":"record","name":"Probe","namespace":"test.codec","fields":[
  {"name":"id","type":"string"},
  {"name":"count","type":"string"}
]}"#;

/// Two union branches where the second's fields include the first's: shape-based resolution would
/// read a `Refunded` back as `Captured`.
const UNION: &str = r#"{"type":"record","name":"Env","namespace":"test.codec","fields":[
  {"name":"payload","type":[
    {"type":"record","name":"Captured","fields":[{"name":"id","type":"string"}]},
    {"type":"record","name":"Refunded","fields":[{"name":"id","type":"string"},{"name":"reason","type":"string"}]}
  ]}
]}"#;

/// UNION with a branch inserted in front and a defaulted field added: branches must be found by
/// name, not by position or shape.
const UNION_V2: &str = r#"{"type":"record","name":"Env","namespace":"test.codec","fields":[
  {"name":"payload","type":[
    {"type":"record","name":"Opened","fields":[{"name":"id","type":"string"}]},
    {"type":"record","name":"Captured","fields":[{"name":"id","type":"string"}]},
    {"type":"record","name":"Refunded","fields":[{"name":"id","type":"string"},{"name":"reason","type":"string"}]}
  ]},
  {"name":"note","type":["null","string"],"default":null}
]}"#;

async fn registry() -> RunningRegistry {
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    tributary_registry::start(RegistryConfig {
        listen,
        brokers: KAFKA_BROKERS.get(),
        topic: unique_name("_schemas-codec-test"),
        max_body_bytes: 1 << 20,
        default_compatibility: Compatibility::Backward,
    })
    .await
    .expect("registry starts against the broker at TRIBUTARY_KAFKA_BROKERS")
}

fn probe(id: &str, count: i64) -> Value {
    Value::Record(vec![
        ("id".into(), Value::String(id.into())),
        ("count".into(), Value::Long(count)),
    ])
}

fn parse(text: &str) -> Schema {
    Schema::parse_str(text).unwrap()
}

#[tokio::test]
async fn round_trip_and_evolution() {
    let reg = registry().await;
    let codec = Codec::new(&format!("http://{}", reg.addr));
    let topic = unique_name("codec");

    let bytes = codec.encode_value(&topic, V1, probe("a", 7)).await.unwrap();
    let (id, _) = split_header(&bytes).unwrap();
    let decoded = codec.decode_value(&bytes, None).await.unwrap();
    assert_eq!(decoded.schema_id, id);
    assert_eq!(decoded.value, probe("a", 7));

    // Encoding again reuses the registered id (the encoder caches the subject's id).
    let again = codec.encode_value(&topic, V1, probe("b", 8)).await.unwrap();
    assert_eq!(split_header(&again).unwrap().0, id);

    // A record written with V1 reads as V2 with the default filled in.
    let as_v2 = codec.decode_value(&bytes, Some(&parse(V2))).await.unwrap();
    assert_eq!(
        as_v2.value,
        Value::Record(vec![
            ("id".into(), Value::String("a".into())),
            ("count".into(), Value::Long(7)),
            ("note".into(), Value::String("none".into())),
        ])
    );

    // A fresh codec (empty caches) decodes the same bytes through the registry.
    let other = Codec::new(&format!("http://{}", reg.addr));
    assert_eq!(
        other.decode_value(&bytes, None).await.unwrap().value,
        probe("a", 7)
    );
    reg.shutdown().await;
}

#[tokio::test]
async fn union_branches_resolve_by_name() {
    let reg = registry().await;
    let codec = Codec::new(&format!("http://{}", reg.addr));
    let topic = unique_name("codec-union");
    let refunded = Value::Record(vec![(
        "payload".into(),
        Value::Union(
            1,
            Box::new(Value::Record(vec![
                ("id".into(), Value::String("p-1".into())),
                ("reason".into(), Value::String("late".into())),
            ])),
        ),
    )]);
    let bytes = codec
        .encode_value(&topic, UNION, refunded.clone())
        .await
        .unwrap();

    let same = codec
        .decode_value(&bytes, Some(&parse(UNION)))
        .await
        .unwrap();
    assert_eq!(same.value, refunded);

    let v2 = codec
        .decode_value(&bytes, Some(&parse(UNION_V2)))
        .await
        .unwrap();
    assert_eq!(
        v2.value,
        Value::Record(vec![
            (
                "payload".into(),
                Value::Union(
                    2,
                    Box::new(Value::Record(vec![
                        ("id".into(), Value::String("p-1".into())),
                        ("reason".into(), Value::String("late".into())),
                    ])),
                ),
            ),
            ("note".into(), Value::Union(0, Box::new(Value::Null))),
        ])
    );
    reg.shutdown().await;
}

#[tokio::test]
async fn malformed_input_gets_typed_errors() {
    let reg = registry().await;
    let codec = Codec::new(&format!("http://{}", reg.addr));
    let topic = unique_name("codec");
    let good = codec
        .encode_value(&topic, V1, probe("abc", 42))
        .await
        .unwrap();
    let (id, _) = split_header(&good).unwrap();

    let err = codec.decode_value(&good[..3], None).await.unwrap_err();
    assert!(matches!(err, CodecError::TooShort { len: 3 }), "{err}");

    let mut wrong_magic = good.clone();
    wrong_magic[0] = 7;
    let err = codec.decode_value(&wrong_magic, None).await.unwrap_err();
    assert!(
        matches!(err, CodecError::WrongMagicByte { found: 7 }),
        "{err}"
    );

    // An unknown id is retriable during the grace period (a registry failover), and a data
    // error once it is over (zero here).
    let unknown = frame(id + 1000, &good[5..]);
    let err = codec.decode_value(&unknown, None).await.unwrap_err();
    assert!(
        matches!(err, CodecError::UnknownSchemaIdInGrace { id: i, .. } if i == id + 1000),
        "{err}"
    );
    assert!(err.retriable());
    let impatient = Codec::new(&format!("http://{}", reg.addr))
        .with_unknown_schema_grace(std::time::Duration::ZERO);
    let err = impatient.decode_value(&unknown, None).await.unwrap_err();
    assert!(
        matches!(err, CodecError::UnknownSchemaId { id: i } if i == id + 1000),
        "{err}"
    );
    assert!(!err.retriable());

    let err = codec
        .decode_value(&good[..good.len() - 1], None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, CodecError::CorruptDatum { id: i, .. } if i == id),
        "{err}"
    );

    // The string length varint claims ~2^62 bytes: an error, not an allocation attempt.
    let mut corrupt = frame(id, &[]);
    corrupt.extend_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    let err = codec.decode_value(&corrupt, None).await.unwrap_err();
    assert!(matches!(err, CodecError::CorruptDatum { .. }), "{err}");

    let mut trailing = good.clone();
    trailing.extend_from_slice(&[1, 2, 3]);
    let err = codec.decode_value(&trailing, None).await.unwrap_err();
    assert!(
        matches!(err, CodecError::TrailingBytes { extra: 3, .. }),
        "{err}"
    );

    let err = codec
        .decode_value(&good, Some(&parse(CLASHING)))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CodecError::SchemaMismatch { id: i, reader, .. } if *i == id && reader == "test.codec.Probe"),
        "{err}"
    );

    // A value that does not fit the schema is refused before anything is sent.
    let err = codec
        .encode_value(
            &topic,
            V1,
            Value::Record(vec![("id".into(), Value::Long(1))]),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, CodecError::Encode { .. }), "{err}");

    // Registering a schema that breaks the subject's BACKWARD level is refused by the registry.
    // (A fresh codec: an encoder keeps the first schema it registered for a subject.)
    let fresh = Codec::new(&format!("http://{}", reg.addr));
    let err = fresh
        .encode_value(
            &topic,
            CLASHING,
            Value::Record(vec![
                ("id".into(), Value::String("x".into())),
                ("count".into(), Value::String("y".into())),
            ]),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CodecError::Registry { reason, .. } if reason.contains("409")),
        "{err}"
    );

    // Every truncation and every single-byte change of a good record decodes or errors: no panic.
    for cut in 0..good.len() {
        let _ = codec.decode_value(&good[..cut], None).await;
    }
    for i in 5..good.len() {
        for b in [0x00u8, 0x7f, 0x80, 0xff] {
            let mut m = good.clone();
            m[i] = b;
            let _ = codec.decode_value(&m, None).await;
        }
    }
    reg.shutdown().await;
}

#[tokio::test]
async fn unreachable_registry_is_retriable() {
    // Port 9 (discard) is not served on loopback here: the connection is refused.
    let codec = Codec::new("http://127.0.0.1:9");
    let err = codec
        .decode_value(&frame(1, &[2, 0x61, 4]), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, CodecError::RegistryUnavailable { .. }),
        "{err}"
    );
    assert!(err.retriable());
}

/// A domain type read through the cached, typed path when the writer used a different schema:
/// a newer producer's `events.users` with a branch inserted *first* (shifting every union index)
/// and an extra envelope field. Branches must be matched by name, the extra field dropped.
#[tokio::test]
async fn typed_decode_resolves_a_different_writer_schema_by_name() {
    use tributary_schemas::domain::users::{UserEvent, UserRegistered};
    use tributary_schemas::types::Envelope;
    use tributary_schemas::AvroRecord;

    let reg = registry().await;
    let codec = Codec::new(&format!("http://{}", reg.addr));

    let mut schema: serde_json::Value =
        serde_json::from_str(<Envelope<UserEvent> as AvroRecord>::SCHEMA_TEXT).unwrap();
    let fields = schema["fields"].as_array_mut().unwrap();
    fields.push(serde_json::json!({"name": "tenant", "type": ["null", "string"], "default": null}));
    let payload = fields.iter_mut().find(|f| f["name"] == "payload").unwrap();
    payload["type"].as_array_mut().unwrap().insert(
        0,
        serde_json::json!({"type": "record", "name": "UserMerged", "fields": [
            {"name": "user_id", "type": "string"}, {"name": "into", "type": "string"}]}),
    );
    let writer_text = schema.to_string();

    let original: Envelope<UserEvent> = Envelope::new(
        "u-1",
        "c-1",
        UserEvent::UserRegistered(UserRegistered {
            user_id: "u-1".into(),
            email: "u@example.com".into(),
            display_name: "U".into(),
            locale: None,
        }),
    );
    // The same record in the writer's shape: union index + 1, and the extra field.
    let Value::Record(mut fields) = original.to_avro().unwrap() else {
        panic!("a record")
    };
    for (name, v) in fields.iter_mut() {
        if name == "payload" {
            if let Value::Union(i, inner) = v {
                *v = Value::Union(*i + 1, inner.clone());
            }
        }
    }
    fields.push((
        "tenant".into(),
        Value::Union(1, Box::new(Value::String("acme".into()))),
    ));
    let topic = unique_name("codec-typed");
    let bytes = codec
        .encode_value(&topic, &writer_text, Value::Record(fields))
        .await
        .unwrap();

    let back: Envelope<UserEvent> = codec.decode(&bytes).await.unwrap();
    assert_eq!(back, original);
    // And again through the cached plan.
    let again: Envelope<UserEvent> = codec.decode(&bytes).await.unwrap();
    assert_eq!(again, original);
    reg.shutdown().await;
}
