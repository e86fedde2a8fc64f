"""The reference Confluent client on the other side of our codec and registry.

    interop.py produce --registry URL --brokers B --topic T --schema FILE --id ID --user-id U --email E
        serializes one UserRegistered envelope with confluent-kafka's AvroSerializer (which registers
        the schema under `<topic>-value` through SchemaRegistryClient) and produces it to T.
    interop.py consume --registry URL --brokers B --topic T
        consumes the first record of T, deserializes it with AvroDeserializer (which fetches the writer
        schema by the id in the record's header) and prints it as one JSON line.

Run by schemas/tests/interop.rs with the project's venv python.
"""

import argparse
import datetime
import json
import sys
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext


def produce(args):
    with open(args.schema) as f:
        schema_str = f.read()
    registry = SchemaRegistryClient({"url": args.registry})
    serializer = AvroSerializer(registry, schema_str, conf={"auto.register.schemas": True})
    value = {
        "id": args.id,
        "aggregate_id": args.user_id,
        "sequence": 1,
        "causation_id": None,
        "correlation_id": args.id,
        "timestamp": 1_700_000_000_000,
        # fastavro's tuple notation picks the union branch by its full name.
        "payload": (
            "io.tributary.users.UserRegistered",
            {"user_id": args.user_id, "email": args.email, "display_name": "Py", "locale": "en-GB"},
        ),
    }
    data = serializer(value, SerializationContext(args.topic, MessageField.VALUE))
    producer = Producer({"bootstrap.servers": args.brokers})
    errors = []
    producer.produce(args.topic, key=args.user_id.encode(), value=data,
                     on_delivery=lambda err, _msg: err and errors.append(err))
    if producer.flush(30) != 0 or errors:
        sys.exit(f"produce to {args.topic} failed: {errors or 'not delivered within 30 s'}")


def plain(v):
    """JSON-friendly form of what AvroDeserializer returns."""
    if isinstance(v, datetime.datetime):
        return int(v.timestamp() * 1000)
    if isinstance(v, tuple):  # (record name, value) from return_record_name
        return {"type": v[0], "value": plain(v[1])}
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v


def consume(args):
    registry = SchemaRegistryClient({"url": args.registry})
    deserializer = AvroDeserializer(registry, return_record_name=True)
    consumer = Consumer({
        "bootstrap.servers": args.brokers,
        "group.id": f"interop-{uuid.uuid4()}",
        "enable.auto.commit": False,
    })
    consumer.assign([TopicPartition(args.topic, 0, 0)])
    try:
        for _ in range(60):
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                sys.exit(f"consume from {args.topic} failed: {msg.error()}")
            value = deserializer(msg.value(), SerializationContext(args.topic, MessageField.VALUE))
            print(json.dumps(plain(value)))
            return
        sys.exit(f"no record on {args.topic} within 30 s")
    finally:
        consumer.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["produce", "consume"])
    p.add_argument("--registry", required=True)
    p.add_argument("--brokers", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--schema")
    p.add_argument("--id")
    p.add_argument("--user-id")
    p.add_argument("--email")
    args = p.parse_args()
    produce(args) if args.mode == "produce" else consume(args)


if __name__ == "__main__":
    main()
