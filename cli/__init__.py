"""The `hapnet` command-line app (installed as `hapnet.cli`)."""
