"""Beyond one process: static shards (`--shard I/N`), `adbatch merge`, the Ray backend.

- which records a shard takes and byte ranges cut at line boundaries are pure:
  engine/core/shard.py.
- `merge.py`: join shard outputs, check they cover the input exactly once; a shard's
  counters as JSON (the manifests themselves: engine/files/manifests.py).
- `plan.py`: a Ray run's shards (byte ranges of files and objects, Parquet row groups,
  whole gzip/CSV inputs), kept with their parts.
- `store.py`: where the parts live (`OUT.parts/`): a shared directory, or a prefix of the
  output's object store; `join.py`: the parts joined into `-o` with its manifest.
- `actors.py`: the sender, rate and token actors, as plain classes.
- `ray_backend.py`: `--backend ray`, the driver; imports ray only when called
  (extra `adbatch[ray]`).
"""
