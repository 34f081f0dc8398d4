"""stream-lstm: a Kafka-driven, real-time LSTM forecaster with per-key state in Redis."""

__version__ = "0.1.0"

__all__ = ["__version__"]
