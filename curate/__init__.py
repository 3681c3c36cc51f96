"""curate — the core: the record (:class:`Example`), the store, ingestion,
review events, gates and frozen snapshots. Every other package imports it."""
from .example import Example, MessageError, Source, validate_messages
from .store import ConflictError, Store, open_store

__all__ = ["Example", "MessageError", "Source", "validate_messages", "Store", "open_store", "ConflictError"]
