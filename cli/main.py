"""The `hapnet` command: a thin layer over the library, one sub-app per area."""

from __future__ import annotations

import typer

from hapnet.cli import data_stats, embed, inspect, models, ontology, perf, synth, train

app = typer.Typer(
    help="hapnet: HAP embeddings of medical ontologies and next-visit diagnosis prediction.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(ontology.app, name="ontology")
app.command()(train.train)
app.command()(train.evaluate)
app.command("models")(models.list_models)
app.command()(synth.synth)
app.command("data-stats")(data_stats.data_stats_command)
app.command()(inspect.predict)
app.command()(inspect.explain)
app.command()(inspect.plot)
app.command()(embed.embed)
app.command()(embed.neighbors)
app.command()(perf.bench)
app.command()(perf.reproduce)


def main() -> None:
    app()
