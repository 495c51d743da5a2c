"""The MuseCL trainer: region similarities, positive pairs, losses, the training loop, and
the multi-process launch.

It builds on the inference networks of :mod:`musecl_store.nn` and the embedding run of
:mod:`musecl_store.embedding`; the store embeds and re-embeds with those alone, without
importing this package. The facade (:mod:`musecl_store.api`) is this package's only caller
in the store, and this package never imports the facade.
"""

__all__: list[str] = []
