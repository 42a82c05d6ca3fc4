"""`python -m hapnet ...`: the `hapnet` command, also what `torchrun -m hapnet train ...` and
`hapnet train --nproc N` start on every rank of a data-parallel run (docs/scaling.md)."""

from hapnet.cli.main import main

if __name__ == "__main__":
    main()
