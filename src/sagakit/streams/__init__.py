"""Redis Streams: the ``sagakit:events`` stream of history entries (publisher, codec)."""
