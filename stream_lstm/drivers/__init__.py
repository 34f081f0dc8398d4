"""Drivers: the Kafka clients at the edge, feeding the runtime's engine.

``confluent.py`` (the worker's loop on confluent-kafka: ticks, rebalances, commits, rewinds),
``faust.py`` (the same engine as a Faust agent), ``kafka_client.py`` (consumer, producer and
admin helpers), ``assembly.py`` (builds the engine for either driver from the settings).
"""
