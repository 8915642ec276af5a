"""Ranking at scale: ``engine`` (streaming top-k over models, jit / vmap / shard_map over
every device), ``rank`` (rows of ranked models for a benchmark's tasks) and ``rank_job``
(the resumable ``rank_all`` job). Import the modules themselves."""
