-- Versions of deleted entities. A delete removes the row, so without this a replay of the
-- entity's older events would bring it back; upserts skip keys whose tombstone is as new or
-- newer than they are.
CREATE TABLE sink_tombstones (
    view        text NOT NULL,
    id          text NOT NULL,
    version     bigint NOT NULL,
    deleted_at  timestamptz NOT NULL,
    PRIMARY KEY (view, id)
);
