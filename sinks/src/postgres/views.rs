//! The tables this sink keeps (see `migrations/postgres`) and the statements that write them.
//!
//! A batch is first `COPY`ed into the per-connection staging table [`STAGE`], then applied with
//! one statement per view and operation that reads its rows from there, so a batch costs a
//! handful of round trips whatever its size. Values travel as one `jsonb` document per row and
//! are typed by `jsonb_populate_record(NULL::<table>, doc)`, which keeps the statements generic
//! over the columns.

/// How a view is written.
#[derive(Debug, Clone, Copy)]
pub enum ViewKind {
    /// A state table keyed by `id` with a `version` column: upserts and patches apply only with
    /// a newer version.
    State,
    /// An append-only table keyed by `(key column, version column)`: inserted once.
    Append {
        key: &'static str,
        version: &'static str,
        time: &'static str,
    },
}

/// One table.
#[derive(Debug, Clone, Copy)]
pub struct View {
    pub name: &'static str,
    pub kind: ViewKind,
    /// Data columns (not the key, version or time columns).
    pub columns: &'static [&'static str],
    /// The parent view and the column holding the parent's id: a row is not written while its
    /// parent is deleted (it would violate the foreign key, and belongs to a deleted entity).
    pub parent: Option<(&'static str, &'static str)>,
}

/// Every view, parents before children: statements run in this order, so the order items of an
/// order find their order row (foreign key).
pub const VIEWS: &[View] = &[
    View {
        name: "users",
        kind: ViewKind::State,
        columns: &[
            "email",
            "display_name",
            "avatar_url",
            "locale",
            "preferred_channel",
            "marketing_opt_in",
            "preferred_currency",
        ],
        parent: None,
    },
    View {
        name: "orders",
        kind: ViewKind::State,
        columns: &[
            "user_id",
            "status",
            "currency",
            "total_cents",
            "payment_id",
            "cancel_reason",
            "cancel_detail",
            "placed_at",
        ],
        parent: None,
    },
    View {
        name: "order_items",
        kind: ViewKind::State,
        columns: &[
            "order_id",
            "line_no",
            "product_id",
            "quantity",
            "unit_price_cents",
        ],
        parent: Some(("orders", "order_id")),
    },
    View {
        name: "order_events",
        kind: ViewKind::Append {
            key: "aggregate_id",
            version: "sequence",
            time: "occurred_at",
        },
        columns: &[
            "event_id",
            "type",
            "payload",
            "correlation_id",
            "causation_id",
        ],
        parent: None,
    },
    View {
        name: "payments",
        kind: ViewKind::State,
        columns: &[
            "order_id",
            "user_id",
            "status",
            "amount_cents",
            "currency",
            "authorization_code",
            "decline_reason",
            "decline_detail",
        ],
        parent: None,
    },
    View {
        name: "refunds",
        kind: ViewKind::State,
        columns: &[
            "payment_id",
            "order_id",
            "amount_cents",
            "currency",
            "reason",
        ],
        parent: None,
    },
    View {
        name: "revenue_windows",
        kind: ViewKind::State,
        columns: &[
            "window_start",
            "window_end",
            "currency",
            "order_count",
            "revenue_cents",
        ],
        parent: None,
    },
    View {
        name: "top_products",
        kind: ViewKind::State,
        columns: &["window_start", "window_end", "products"],
        parent: None,
    },
];

/// The view named `name`.
pub fn view(name: &str) -> Option<&'static View> {
    VIEWS.iter().find(|v| v.name == name)
}

/// Versions of deleted entities (see `migrations/postgres`).
pub const TOMBSTONES: &str = "sink_tombstones";

/// The staging table: temporary (one per connection, invisible to others) and emptied at
/// every commit, so a batch only ever sees its own rows.
pub const STAGE: &str = "tributary_sink_stage";

/// Creates [`STAGE`] on this connection if it is not there yet. (A plain `CREATE ... IF NOT
/// EXISTS` would log a notice for every batch.)
pub const CREATE_STAGE: &str = "DO $$ BEGIN \
     IF to_regclass('pg_temp.tributary_sink_stage') IS NULL THEN \
     CREATE TEMP TABLE tributary_sink_stage (view text NOT NULL, op text NOT NULL, \
     key text NOT NULL, version bigint NOT NULL, event_ms bigint NOT NULL, doc jsonb) \
     ON COMMIT DELETE ROWS; \
     END IF; END $$";

/// Loads the batch into [`STAGE`] (text format, columns as in [`CREATE_STAGE`]).
pub const COPY_STAGE: &str =
    "COPY tributary_sink_stage (view, op, key, version, event_ms, doc) FROM STDIN";

impl View {
    /// Upsert or patch of a state table. A field absent from a row's document keeps the stored
    /// value (a patch); an upsert sends every column, absent ones as JSON null. The `WHERE` makes
    /// an equal or older version a no-op, which the caller counts as stale.
    pub fn upsert_sql(&self) -> String {
        let t = self.name;
        let cols = self.columns.join(", ");
        let values: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("CASE WHEN s.doc ? '{c}' THEN r.{c} ELSE cur.{c} END"))
            .collect();
        let sets: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("{c} = EXCLUDED.{c}"))
            .collect();
        let parent = match self.parent {
            Some((view, column)) => format!(
                "AND NOT EXISTS (SELECT 1 FROM {TOMBSTONES} AS p \
                 WHERE p.view = '{view}' AND p.id = r.{column})"
            ),
            None => String::new(),
        };
        format!(
            "INSERT INTO {t} AS t (id, {cols}, version, updated_at) \
             SELECT s.key, {values}, s.version, to_timestamp(s.event_ms / 1000.0) \
             FROM {STAGE} AS s \
             CROSS JOIN LATERAL jsonb_populate_record(NULL::{t}, s.doc) AS r \
             LEFT JOIN {t} AS cur ON cur.id = s.key \
             WHERE s.view = '{t}' AND s.op = 'upsert' \
             AND NOT EXISTS (SELECT 1 FROM {TOMBSTONES} AS d \
                 WHERE d.view = '{t}' AND d.id = s.key AND d.version >= s.version) \
             {parent} \
             ON CONFLICT (id) DO UPDATE SET {sets}, version = EXCLUDED.version, updated_at = EXCLUDED.updated_at \
             WHERE t.version < EXCLUDED.version",
            values = values.join(", "),
            sets = sets.join(", "),
        )
    }

    /// Delete of state rows older than the change, remembering the deleted version so that a
    /// replay of older events does not bring the row back.
    pub fn delete_sql(&self) -> String {
        format!(
            "WITH remembered AS ( \
               INSERT INTO {TOMBSTONES} AS d (view, id, version, deleted_at) \
               SELECT '{t}', s.key, s.version, to_timestamp(s.event_ms / 1000.0) \
               FROM {STAGE} AS s WHERE s.view = '{t}' AND s.op = 'delete' \
               ON CONFLICT (view, id) DO UPDATE \
               SET version = EXCLUDED.version, deleted_at = EXCLUDED.deleted_at \
               WHERE d.version < EXCLUDED.version) \
             DELETE FROM {t} AS t USING {STAGE} AS s \
             WHERE s.view = '{t}' AND s.op = 'delete' AND t.id = s.key AND t.version < s.version",
            t = self.name
        )
    }

    /// Insert of append-only entries; present ones are skipped (and counted stale).
    pub fn append_sql(&self) -> Option<String> {
        let ViewKind::Append { key, version, time } = self.kind else {
            return None;
        };
        let t = self.name;
        let cols = self.columns.join(", ");
        let values: Vec<String> = self.columns.iter().map(|c| format!("r.{c}")).collect();
        Some(format!(
            "INSERT INTO {t} ({key}, {version}, {time}, {cols}) \
             SELECT s.key, s.version, to_timestamp(s.event_ms / 1000.0), {values} \
             FROM {STAGE} AS s \
             CROSS JOIN LATERAL jsonb_populate_record(NULL::{t}, s.doc) AS r \
             WHERE s.view = '{t}' AND s.op = 'append' \
             ON CONFLICT ({key}, {version}) DO NOTHING",
            values = values.join(", "),
        ))
    }
}
