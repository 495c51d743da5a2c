"""Ingest: a bundle into the store, as a plan (the diff against the store) and then an apply
(the writes, under the write lock); census layers and their area-weighted joins."""
