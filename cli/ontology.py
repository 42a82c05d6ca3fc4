"""`hapnet ontology info|show|list`."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

import hapnet
from hapnet.cli.common import AsJson, console, user_errors
from hapnet.ontology.graph import EXACT, UNKNOWN

app = typer.Typer(help="Inspect ontologies: built-in names or files.", no_args_is_help=True)

SourceArg = Annotated[str, typer.Argument(help="Built-in name (see `hapnet ontology list`) or a CSV file.")]
LevelsOpt = Annotated[
    int | None,
    typer.Option("--levels", metavar="K", help="Use only the lowest K levels (as HAP (lvK)); default: all."),
]


@app.command("list")
@user_errors
def list_builtins() -> None:
    """The built-in ontologies."""
    table = Table("name", "description", title="Built-in ontologies")
    for builtin in hapnet.BUILTINS.values():
        table.add_row(builtin.name, builtin.description)
    console.print(table)


@app.command()
@user_errors
def info(
    source: SourceArg,
    levels: LevelsOpt = None,
    as_json: AsJson = False,
) -> None:
    """Node, edge and level counts of an ontology."""
    summary = hapnet.load_ontology(source, levels=levels).summary()
    if as_json:
        print(json.dumps(summary))
        return
    table = Table(title=f"Ontology {escape(summary['name'])}", show_header=False)
    for key in ("nodes", "edges", "leaves", "depth", "multi_parent", "max_parents", "max_children"):
        table.add_row(key.replace("_", " "), f"{summary[key]:,}")
    if summary["cut_level"]:
        table.add_row("levels used", f"{summary['cut_level']}..{summary['depth']}")
        below = summary["standalone_below_cut"]
        table.add_row("leaves below the cut", f"{below:,} (keep their own embedding)")
    console.print(table)
    levels_table = Table("level", "nodes", title="Nodes per level")
    for level, count in enumerate(summary["per_level"]):
        levels_table.add_row(str(level), f"{count:,}")
    console.print(levels_table)


@app.command()
@user_errors
def show(
    source: SourceArg,
    code: Annotated[str, typer.Argument(help="A code or category id, dotted or not.")],
    max_children: Annotated[int, typer.Option("--children", help="How many children to list.")] = 30,
) -> None:
    """A code's description, its path(s) to the root, and its children."""
    ontology = hapnet.load_ontology(source)
    found = ontology.resolve(code)
    if found.status == UNKNOWN:
        index = ontology.index(code.strip())  # an id as written, else a one-line "unknown code" error
    else:
        index = found.index
        if found.status != EXACT:
            console.print(f"[yellow]{escape(code)} is not in {escape(source)}; nearest ancestor shown.[/]")

    def label(i: int) -> str:
        node, text = escape(ontology.ids[i]), escape(ontology.descriptions[i])
        return f"[bold]{node}[/] {text} [dim](level {ontology.levels[i]})[/]"

    console.print(label(index))
    for path in ontology.paths_to_root(index):
        tree = Tree(label(path[-1]))
        branch = tree
        for node in reversed(path[:-1]):
            branch = branch.add(label(node))
        console.print(tree)
    children = ontology.children(index)
    if len(children):
        table = Table("child", "description", "level", title=f"{len(children)} children")
        for child in children[:max_children]:
            table.add_row(
                escape(ontology.ids[child]), escape(ontology.descriptions[child]), str(ontology.levels[child])
            )
        if len(children) > max_children:
            table.caption = f"first {max_children} of {len(children)} (--children N for more)"
        console.print(table)
    else:
        console.print("[dim]no children (a leaf)[/]")
