"""Places one order with the reference Confluent client (confluent-kafka's AvroSerializer).

    place_order.py --registry URL --brokers B --topic T --schema FILE --order O --user U --product P --quantity N

The serializer registers the schema under `<topic>-value` with our registry and frames the record;
the producer partitions by its own (CRC32) rule. Run by tests/interop.rs with the project's venv.
"""

import argparse
import sys
import time
import uuid

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext


def main():
    ap = argparse.ArgumentParser()
    for flag in ("registry", "brokers", "topic", "schema", "order", "user", "product"):
        ap.add_argument(f"--{flag}", required=True)
    ap.add_argument("--quantity", type=int, required=True)
    args = ap.parse_args()
    with open(args.schema) as f:
        schema_str = f.read()
    registry = SchemaRegistryClient({"url": args.registry})
    serializer = AvroSerializer(registry, schema_str, conf={"auto.register.schemas": True})
    command_id = str(uuid.uuid4())
    value = {
        "id": command_id,
        "aggregate_id": args.order,
        "sequence": 0,
        "causation_id": None,
        "correlation_id": command_id,
        "timestamp": int(time.time() * 1000),
        "payload": (
            "io.tributary.orders.PlaceOrder",
            {
                "order_id": args.order,
                "user_id": args.user,
                "lines": [{"product_id": args.product, "quantity": args.quantity}],
                "currency": "EUR",
            },
        ),
    }
    data = serializer(value, SerializationContext(args.topic, MessageField.VALUE))
    producer = Producer({"bootstrap.servers": args.brokers})
    errors = []
    producer.produce(args.topic, key=args.order.encode(), value=data,
                     on_delivery=lambda err, _msg: err and errors.append(err))
    if producer.flush(30) != 0 or errors:
        sys.exit(f"produce to {args.topic} failed: {errors or 'not delivered within 30 s'}")


if __name__ == "__main__":
    main()
