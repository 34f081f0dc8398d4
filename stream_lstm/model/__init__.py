"""Models (``lstm``, ``cnn-lstm-attn``), scaling, and artifacts that load without unpickling."""
