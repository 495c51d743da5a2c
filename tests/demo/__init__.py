"""Tests of musecl_store.demo: the synthetic city."""
