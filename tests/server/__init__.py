"""Tests of musecl_store.server: the HTTP API and the map page in a browser."""
