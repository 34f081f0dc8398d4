"""The benchmark suite (``stream-lstm bench``): figures and JSON, never a test verdict."""
