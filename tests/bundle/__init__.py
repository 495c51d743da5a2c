"""Tests of musecl_store.bundle: reading bundles, the corpus of broken ones, and fuzzing the
reader."""
