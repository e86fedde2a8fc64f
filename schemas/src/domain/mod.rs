//! Rust types of the domain's records, one module per area.
//!
//! Every struct mirrors one Avro record field by field (same names, `Option` for nullable
//! unions, `i64` for longs and timestamps, `i32` for ints); every unit enum mirrors one Avro
//! enum, its variants spelled as the symbols. Each topic's union enum is declared with
//! `topic_payload!`, whose variant order must be the union's branch order.

pub mod analytics;
pub mod inventory;
pub mod notifications;
pub mod orders;
pub mod payments;
pub mod rejections;
pub mod users;

pub use analytics::*;
pub use inventory::*;
pub use notifications::*;
pub use orders::*;
pub use payments::*;
pub use rejections::*;
pub use users::*;

/// Declares a topic's payload union enum (one newtype variant per record, named as the
/// record) and implements [`crate::types::TopicPayload`] for it, embedding
/// `avro/<topic>.avsc`.
macro_rules! topic_payload {
    (
        $(#[$meta:meta])*
        pub enum $name:ident for $topic:literal {
            $($(#[$vmeta:meta])* $variant:ident),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* $variant($variant),)+
        }

        $(
            impl From<$variant> for $name {
                fn from(record: $variant) -> Self {
                    Self::$variant(record)
                }
            }
        )+

        impl $crate::types::TopicPayload for $name {
            const TOPIC: &'static str = $topic;
            const SCHEMA_TEXT: &'static str =
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/avro/", $topic, ".avsc"));
            const TYPE_NAME: &'static str = stringify!($name);
            const BRANCHES: &'static [&'static str] = &[$(stringify!($variant)),+];

            fn topic_schema() -> &'static $crate::types::TopicSchema {
                static SCHEMA: $crate::types::TopicSchema = $crate::types::TopicSchema::new(
                    $topic,
                    <$name as $crate::types::TopicPayload>::SCHEMA_TEXT,
                );
                &SCHEMA
            }

            fn branch_name(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => stringify!($variant),)+
                }
            }

            fn branch_value(&self) -> Result<apache_avro::types::Value, apache_avro::Error> {
                match self {
                    $(Self::$variant(record) => apache_avro::to_value(record),)+
                }
            }

            fn from_branch_value(
                branch: &str,
                value: &apache_avro::types::Value,
            ) -> Option<Result<Self, apache_avro::Error>> {
                $(
                    if branch == stringify!($variant) {
                        return Some(apache_avro::from_value::<$variant>(value).map(Self::$variant));
                    }
                )+
                None
            }
        }
    };
}
use topic_payload;
