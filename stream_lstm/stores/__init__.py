"""State stores: the contract (``base.py``), the record format (``record.py``), and the backends
as equals under it: Redis (``redis.py``) and in memory (``memory.py``)."""
