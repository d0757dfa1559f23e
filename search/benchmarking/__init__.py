"""Performance harness behind `rsrt bench`: one concept per module.

corpus (the deterministic scale corpus) · vectors (its precomputed, jittered vectors) · encoders
(backend speed and quality) · ingest (pipeline throughput) · query (latency, 1..N clients) · recall
(kNN vs exact) · resources (memory) · report (Markdown + plot) · harness (`rsrt bench all`).
"""
