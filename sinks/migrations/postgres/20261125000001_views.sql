-- The PostgreSQL views of the event topics (ADR-007): users, orders with items and status,
-- the order event store, payments and refunds, and analytics.
--
-- Every state table carries `version`, the per-aggregate sequence of the last event applied to
-- the row: upserts only win with a strictly newer version, so replaying the log changes nothing.
-- Columns other than keys and versions are nullable because a patch of a missing row creates it
-- with just the patched fields.

CREATE TABLE users (
    id                  text PRIMARY KEY,
    email               text,
    display_name        text,
    avatar_url          text,
    locale              text,
    preferred_channel   text,
    marketing_opt_in    boolean,
    preferred_currency  text,
    version             bigint NOT NULL,
    updated_at          timestamptz NOT NULL
);

CREATE TABLE orders (
    id              text PRIMARY KEY,
    user_id         text,
    status          text,
    currency        text,
    total_cents     bigint CHECK (total_cents >= 0),
    payment_id      text,
    cancel_reason   text,
    cancel_detail   text,
    placed_at       timestamptz,
    version         bigint NOT NULL,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX orders_user_id ON orders (user_id);
CREATE INDEX orders_status ON orders (status);

-- One row per line; `id` is `<order id>/<line number>`.
CREATE TABLE order_items (
    id                text PRIMARY KEY,
    order_id          text NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    line_no           integer,
    product_id        text,
    quantity          integer CHECK (quantity > 0),
    unit_price_cents  bigint CHECK (unit_price_cents >= 0),
    version           bigint NOT NULL,
    updated_at        timestamptz NOT NULL
);
CREATE INDEX order_items_order_id ON order_items (order_id);

-- The order event store: append-only, one row per event, from which order state is rebuilt.
CREATE TABLE order_events (
    aggregate_id    text NOT NULL,
    sequence        bigint NOT NULL,
    event_id        text NOT NULL,
    type            text NOT NULL,
    payload         jsonb NOT NULL,
    correlation_id  text,
    causation_id    text,
    occurred_at     timestamptz NOT NULL,
    PRIMARY KEY (aggregate_id, sequence)
);

CREATE TABLE payments (
    id                  text PRIMARY KEY,
    order_id            text,
    user_id             text,
    status              text,
    amount_cents        bigint CHECK (amount_cents >= 0),
    currency            text,
    authorization_code  text,
    decline_reason      text,
    decline_detail      text,
    version             bigint NOT NULL,
    updated_at          timestamptz NOT NULL
);
CREATE INDEX payments_order_id ON payments (order_id);

-- One row per refund; `id` is `<payment id>/<sequence>`.
CREATE TABLE refunds (
    id            text PRIMARY KEY,
    payment_id    text NOT NULL,
    order_id      text,
    amount_cents  bigint CHECK (amount_cents >= 0),
    currency      text,
    reason        text,
    version       bigint NOT NULL,
    updated_at    timestamptz NOT NULL
);
CREATE INDEX refunds_payment_id ON refunds (payment_id);

-- Revenue and order count per window and currency; `id` is `<window start ms>/<currency>`.
CREATE TABLE revenue_windows (
    id             text PRIMARY KEY,
    window_start   timestamptz,
    window_end     timestamptz,
    currency       text,
    order_count    bigint,
    revenue_cents  bigint,
    version        bigint NOT NULL,
    updated_at     timestamptz NOT NULL
);

-- Best-selling products per window; `id` is `<window start ms>`.
CREATE TABLE top_products (
    id            text PRIMARY KEY,
    window_start  timestamptz,
    window_end    timestamptz,
    products      jsonb,
    version       bigint NOT NULL,
    updated_at    timestamptz NOT NULL
);
