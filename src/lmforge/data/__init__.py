"""Data pipeline: corpus reading and cleaning, token shards, batch builders."""
