"""Tests of musecl_store.ingest: ingest into the store, its memory bound, and census
interpolation."""
