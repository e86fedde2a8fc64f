"""The peer in the streams bench (`make bench`, section "streams"): the same stateful word count
as `processors/streams/examples/bench.rs`, written with Quix Streams (PyPI `quixstreams`, in the
bench-only venv `stack/bench-streams.sh` makes).

Usage: bench-quix.py BROKERS INPUT_TOPIC RECORDS

Reads INPUT_TOPIC from the start with a fresh group; per record, reads the key's count from a
state store (RocksDB, with Quix's changelog topic on the same broker), adds one, writes it back
and produces the count to an output topic; at-least-once, Quix's defaults otherwise. The clock
starts at the first record and stops once RECORDS have been processed and the application has
flushed its outputs and committed (Quix's `stop()` commits the open checkpoint). Prints one line:
`quix: N records, R records/s`.
"""

import logging
import sys
import tempfile
import time
import uuid

from quixstreams import Application


def main() -> int:
    brokers, input_topic, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    suffix = uuid.uuid4().hex[:8]
    app = Application(
        broker_address=brokers,
        consumer_group=f"bench-quix-{suffix}",
        auto_offset_reset="earliest",
        processing_guarantee="at-least-once",
        state_dir=tempfile.mkdtemp(prefix="bench-quix-state-"),
        loglevel="WARNING",
    )
    source = app.topic(input_topic, key_deserializer="str", value_deserializer="bytes")
    sink = app.topic(f"bench-quix-out-{suffix}", key_serializer="str", value_serializer="bytes")
    # Quix derives its changelog topic's settings from the input's `retention.ms`, which the
    # local broker's DescribeConfigs leaves out for a topic created without it: say "forever".
    source.broker_config.extra_config.setdefault("retention.ms", "-1")

    seen = {"n": 0, "started": None}

    def count(_value, state):
        c = state.get("count", 0) + 1
        state.set("count", c)
        return c.to_bytes(8, "big")

    def progress(value):
        if seen["started"] is None:
            seen["started"] = time.monotonic()
        seen["n"] += 1
        if seen["n"] == n:
            app.stop()
        return value

    sdf = app.dataframe(source)
    sdf = sdf.apply(count, stateful=True)
    sdf = sdf.update(progress)
    sdf.to_topic(sink)
    app.run()
    took = time.monotonic() - (seen["started"] or time.monotonic())
    if seen["n"] < n:
        print(f"quix: stopped after {seen['n']} of {n} records", file=sys.stderr)
        return 1
    print(f"quix: {n} records, {n / took:.0f} records/s")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
