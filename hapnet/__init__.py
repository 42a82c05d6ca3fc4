"""hapnet: Hierarchical Attention Propagation embeddings of medical ontologies, and
next-visit diagnosis prediction with a visit-level GRU.

Everything the `hapnet` command does is a library call here. The package follows the pipeline:
`hapnet.ontology` -> `hapnet.data` -> `hapnet.models` -> `hapnet.training` -> `hapnet.inspect`,
`hapnet.embeddings`, `hapnet.perf` (docs/DESIGN.md). Modules that need torch load on first use
of a name below, so ontology-only work stays fast. A function that takes a run takes a loaded
`Run` or its folder alike; `k` is always the number of results (accuracy@k, codes, neighbours).

Ontologies
    load_ontology       a built-in ontology by name, or an ontology file (`hapnet ontology`)
    BUILTINS            the built-in ontologies: name -> description and source
    Ontology            a leveled DAG of codes with descriptions; node 0 is the root
    Hierarchy           HAP's bottom-up and top-down steps, level by level, of an ontology

Data
    load_visits         visits from a MIMIC-III/IV, MEDS or OMOP folder, a long CSV or a synth folder
    visits_from_frame   visits from a long pandas DataFrame
    visits_from_lists   visits from nested lists: patients -> visits -> raw codes
    VisitData           patients -> visits -> codes (ontology nodes), as CSR arrays
    data_stats          the aggregate figures of a data set (`hapnet data-stats`)
    DataStats           those figures, nested like the reference JSON
    write_synth         write a synthetic data set shaped like MIMIC-III (`hapnet synth`)
    write_synth_like    write a synthetic twin fitted to some data's figures (`hapnet synth --like`)
    fit_synth_settings  generator settings whose data look like given figures

Models and training
    MODELS              the model registry (`hapnet models`): hap, gram, rnn, rollup, ...
    register_model      add a model to the registry (the CLI accepts it from then on)
    TrainConfig         every setting of a training run, with hapnet's defaults
    make_config         a TrainConfig from a preset plus settings (`--preset paper`)
    train               train one model and write its run folder (`hapnet train`)
    resume              continue an interrupted run from its last epoch (`hapnet train --resume`)
    train_seeds         one run per seed and a mean +- std summary (`hapnet train --seeds`)
    tune                search training settings with Optuna, resumable, several machines (`hapnet tune`)
    load                read a run folder back as a Run
    Run                 a trained run: config, metrics, vocabulary, ontology, model
    evaluate            accuracy@k and loss of a run on its test split or other data (`hapnet evaluate`)
    reproduce           the paper's ten configurations over several seeds (`hapnet reproduce`)
    PAPER_CONFIGS       those ten configurations: HAP, GRAM, RNN, Rollup and their variants

Looking inside a run
    predict_next_visit  the k most probable codes of a patient's next visit (`hapnet predict`)
    explain_code        where a code's final embedding comes from, node by node (`hapnet explain`)
    plot_runs           learning curves, accuracy by frequency group, embedding map (`hapnet plot`)

Embeddings
    embed               a vector for every code, from the ontology alone or a run (`hapnet embed`)
    EmbedConfig         the settings of `embed` from the structure alone
    neighbors           the k codes nearest to a code by cosine (`hapnet neighbors`)
    read_embeddings     read an embeddings file of any format `embed` writes
    write_embeddings    write embeddings; the format follows the file's suffix

Performance and errors
    bench               time propagation and a training step against the naive port (`hapnet bench`)
    torch_threads       run a block with a given number of torch CPU threads
    HapnetError         a user error, reported in one line (the CLI exits with code 2)
    InputError          a HapnetError about an input file: file, line, reason
"""

from __future__ import annotations

import importlib
from typing import Any

from hapnet.errors import HapnetError, InputError
from hapnet.ontology.builtins import BUILTINS, load_ontology
from hapnet.ontology.graph import Ontology

__version__ = "0.1.0"

# name -> module that defines it; imported on first access (PEP 562).
_LAZY = {
    "Hierarchy": "hapnet.ontology.hierarchy",
    "load_visits": "hapnet.data.loaders",
    "visits_from_frame": "hapnet.data.loaders",
    "visits_from_lists": "hapnet.data.loaders",
    "VisitData": "hapnet.data.visits",
    "write_synth": "hapnet.data.synth",
    "data_stats": "hapnet.data.stats",
    "DataStats": "hapnet.data.stats",
    "fit_synth_settings": "hapnet.data.synth_fit",
    "write_synth_like": "hapnet.data.synth_fit",
    "MODELS": "hapnet.models.registry",
    "register_model": "hapnet.models.registry",
    "train": "hapnet.training.trainer",
    "resume": "hapnet.training.trainer",
    "TrainConfig": "hapnet.training.config",
    "make_config": "hapnet.training.config",
    "train_seeds": "hapnet.training.seeds",
    "tune": "hapnet.training.tune",
    "load": "hapnet.training.runs",
    "Run": "hapnet.training.runs",
    "evaluate": "hapnet.training.evaluation",
    "reproduce": "hapnet.training.reproduction",
    "PAPER_CONFIGS": "hapnet.training.reproduction",
    "predict_next_visit": "hapnet.inspect.predict",
    "explain_code": "hapnet.inspect.explain",
    "plot_runs": "hapnet.inspect.plots",
    "embed": "hapnet.embeddings.structure",
    "EmbedConfig": "hapnet.embeddings.config",
    "neighbors": "hapnet.embeddings.neighbors",
    "read_embeddings": "hapnet.embeddings.formats",
    "write_embeddings": "hapnet.embeddings.formats",
    "bench": "hapnet.perf.bench",
    "torch_threads": "hapnet.utils.threads",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hapnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = ["BUILTINS", "HapnetError", "InputError", "Ontology", "load_ontology", *_LAZY]
