"""`hapnet models`: the model registry, as the library sees it."""

from __future__ import annotations

from rich.table import Table

from hapnet.cli.common import console, user_errors


@user_errors
def list_models() -> None:
    """The models `hapnet train --model` accepts (the registry shared with the library)."""
    from hapnet.models.registry import MODELS  # torch: loaded when the command runs

    table = Table("name", "uses ontology", "GloVe over", "description", title="Models")
    for spec in MODELS.values():
        table.add_row(spec.name, "yes" if spec.uses_hierarchy else "no", spec.glove_scope, spec.description)
    console.print(table)
