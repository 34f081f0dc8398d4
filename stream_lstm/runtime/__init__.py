"""The streaming runtime: what happens to a tick of events, independent of the Kafka client.

``engine.py`` (the hot path and the commit cycle), ``cache.py`` (the owned keys' state in slabs),
``events.py`` (decoding and encoding messages), ``scoring.py`` (live forecast scoring and
alerts), ``inference.py`` (one batched model call per tick), ``faults.py`` (fail points for the
fault tests). It knows stores only by their contract (:mod:`stream_lstm.stores.base`), and never
imports training code or a Kafka or Redis client (``make lint`` checks; docs/architecture.md).
"""
