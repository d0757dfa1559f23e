"""rsrt: training-free text-to-text retrieval for remote sensing image archives on OpenSearch.

`rsrt.search` owns the index contract (schema, mappings, client, encoder, queries, evaluation);
`rsrt.ingest` writes into it; `rsrt.cli` composes both into the `rsrt` command.
"""

__version__ = "0.1.0"
