"""Tests of musecl_store.search: indexes, similarity search (single and batch), lookups,
streaming reads, the GPU, and fuzzing the query arguments."""
