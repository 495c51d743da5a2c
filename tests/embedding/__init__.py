"""Tests of musecl_store.embedding: re-embedding (and killing it), and the images fed to the
network."""
