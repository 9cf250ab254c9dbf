"""Beyond one process: static shards (`--shard I/N`), `adbatch merge`, the Ray backend.

- `shard.py`: which events a shard takes, and byte ranges cut at line boundaries (pure).
- `merge.py`: join shard outputs and check they cover the input exactly once.
- `ray_backend.py`: `--backend ray`; imports ray only when called (extra `adbatch[ray]`).
"""
