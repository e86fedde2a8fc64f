"""What record headers cost the local broker: 10 000 small records produced with 0, 1, 2 and 5
headers each, on fresh topics (BENCHMARKS.md, "record headers on the local broker").
Run: $TRIBUTARY_PYTHON stack/bench-headers.py (the stack up)."""
import time, uuid
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
a = AdminClient({"bootstrap.servers": "127.0.0.1:9092"})
for n in (0, 1, 2, 5):
    t = f"hdrbench-{n}-{uuid.uuid4().hex[:8]}"
    a.create_topics([NewTopic(t, 3, 1)])["%s" % t].result()
    p = Producer({"bootstrap.servers": "127.0.0.1:9092", "linger.ms": 1, "enable.idempotence": True})
    hdrs = [(f"tributary.origin.h{i}", b"commands.orders-12345") for i in range(n)]
    N = 10000
    start = time.time()
    for i in range(N):
        p.produce(t, key=f"o-{i}".encode(), value=b"x" * 120, headers=hdrs or None)
        if i % 1000 == 0: p.poll(0)
    p.flush(60)
    print(n, "headers:", N, "records in", round(time.time() - start, 2), "s")
