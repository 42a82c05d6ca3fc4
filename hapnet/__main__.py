"""`python -m hapnet ...`: the `hapnet` command (also what `torchrun -m hapnet` launches)."""

from hapnet.cli.main import main

if __name__ == "__main__":
    main()
