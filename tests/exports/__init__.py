"""Tests of musecl_store.exports: exported files and maps."""
