"""Tests of musecl_store.downstream: the evaluation heads and indicator regression."""
