"""``python -m musecl_store.cli``: the ``musecl`` command."""

from musecl_store.cli import main

main()
