"""``python -m training ...``: the musecl command line, so that torchrun can start it.

    torchrun --nproc-per-node 4 -m training --db postgresql://... train --city demo-0

Each process is one rank of a data-parallel run (see :mod:`training.distributed`).
"""

from musecl_store.cli import main

if __name__ == "__main__":
    main(prog_name="musecl")
