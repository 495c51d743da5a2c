"""Tests of the facade (musecl_store.api) as users drive it: the Python API, kill -9 at every
step, many processes at once, and fuzzing Store.similar."""
