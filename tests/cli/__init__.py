"""Tests of musecl_store.cli: commands, errors and exit codes, and fuzzing its arguments and CSV
readers."""
