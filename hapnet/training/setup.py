"""What a training run is made of, from its config: the data (loaded, or the built-in synthetic
set), the model (the registry's embedder on the model's ontology + the visit GRU), and its GloVe
initialisation (cached by content)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hapnet.data.batches import BatchBuilder
from hapnet.data.loaders import load_visits
from hapnet.data.synth import default_data_path
from hapnet.data.tasks import CategoryTask, category_tasks
from hapnet.data.visits import VisitData
from hapnet.data.vocabulary import Vocabulary
from hapnet.errors import HapnetError
from hapnet.models.embedder import EmbedderConfig
from hapnet.models.glove import Cooccurrence, cooccurrence, like_random_init, train_glove
from hapnet.models.predictor import NextVisitModel
from hapnet.models.registry import get_model
from hapnet.ontology.builtins import load_ontology
from hapnet.ontology.graph import Ontology
from hapnet.ontology.hierarchy import Hierarchy, ancestor_sets
from hapnet.training.config import TrainConfig
from hapnet.utils.cache import cache_dir
from hapnet.utils.textio import atomic_path


def load_training_data(config: TrainConfig) -> tuple[Ontology, VisitData]:
    """The ontology and the data of a run of `config`, loaded whole (one process)."""
    ontology = training_ontology(config)
    path = training_data_path(config)
    data = load_visits(path, ontology, **reading_settings(config))
    check_enough_patients(path, len(data.patient_ids))
    return ontology, data


def reading_settings(config: TrainConfig) -> dict[str, Any]:
    """How a run of `config` reads its data: the keywords of `load_visits` and `load_shard`."""
    return dict(columns=config.columns, unknown=config.unknown, code_pattern=config.code_pattern)


def training_ontology(config: TrainConfig) -> Ontology:
    """The ontology a run of `config` reads its data with (checked against `levels`)."""
    ontology = load_ontology(config.ontology, code_pattern=config.code_pattern)  # meds:DIR reads it too
    if config.levels is not None and config.levels > ontology.depth + 1:
        # truncate() would keep everything: a run named hap-lv99 that truncated nothing
        raise HapnetError(
            f"--levels {config.levels}: ontology {ontology.name} has levels 0..{ontology.depth}, "
            f"so at most {ontology.depth + 1} (the full hierarchy)"
        )
    return ontology


MIN_PATIENTS = 10  # fewer cannot be split 70/10/20


def check_enough_patients(path: str | Path, num_patients: int) -> None:
    if num_patients < MIN_PATIENTS:
        raise HapnetError(
            f"{path}: only {num_patients} patients with 2+ visits; "
            f"at least {MIN_PATIENTS} are needed to split"
        )


def training_data_path(config: TrainConfig) -> str | Path:
    """The data a run of `config` trains on: `data`, else the built-in synthetic set (generated
    into the cache on first use)."""
    return config.data or default_data_path(config.ontology, config.synth_patients)


def model_ontology(config: TrainConfig, ontology: Ontology, vocab: Vocabulary) -> Ontology:
    """The ontology a model of `config` runs on: truncated to `levels`, and with scope "observed"
    pruned to the observable codes and their ancestors."""
    used = ontology.truncate(config.levels)
    return used.prune(vocab.nodes) if config.ontology_scope == "observed" else used


def prediction_tasks(config: TrainConfig, ontology: Ontology, vocab: Vocabulary) -> list[CategoryTask]:
    """The auxiliary tasks of `config.aux_levels`: categories of the (untruncated) ontology."""
    return category_tasks(ontology, vocab.nodes, list(config.aux_levels))


def batch_builder(config: TrainConfig, data: VisitData, vocab: Vocabulary) -> BatchBuilder:
    """Batches with what a model of `config` reads and is trained on (its tasks, visit gaps)."""
    tasks = prediction_tasks(config, data.ontology, vocab)
    return BatchBuilder(data, vocab.code_to_class, tasks, gaps=config.time_input)


def build_model(config: TrainConfig, ontology: Ontology, vocab: Vocabulary) -> NextVisitModel:
    """The registry's embedder for `config.model` on the model's ontology + the visit GRU and
    its heads. With scope "observed" only the nodes in use get a base embedding (a smaller table)."""
    spec = get_model(config.model)
    hierarchy = Hierarchy.from_ontology(model_ontology(config, ontology, vocab))
    embedder_config = EmbedderConfig(
        dim=config.dim,
        attention_dim=config.attention_dim,
        base_nodes="used" if config.ontology_scope == "observed" else "all",
    )
    embedder = spec.embedder(hierarchy, vocab.nodes, embedder_config)
    return NextVisitModel(
        embedder,
        len(vocab),
        config.dim,
        config.hidden,
        config.dropout,
        output=config.output,
        aux_classes={t.name: t.num_categories for t in prediction_tasks(config, ontology, vocab)},
        task_weights=config.task_weights,
        time_input=config.time_input,
    )


def training_cooccurrence(config: TrainConfig, data: VisitData, train: np.ndarray) -> Cooccurrence:
    """GloVe's co-occurrence counts of the training visits: of codes only (RNN+/Rollup+), of codes
    and ancestors (HAP/GRAM), of codes and parents (Rollup+'s rows)."""
    spec = get_model(config.model)
    ontology = data.ontology.truncate(config.levels)
    if spec.glove_scope == "ancestors":
        ancestors = ancestor_sets(ontology)
    elif spec.glove_scope == "parents":  # Rollup+: the parent rows are the ones Rollup uses
        ancestors = [frozenset(ontology.parents(i).tolist()) for i in range(len(ontology))]
    else:
        ancestors = None
    subset = data.subset(train)
    return cooccurrence(subset.visit_offsets, subset.codes, len(ontology), ancestors)


def glove_init(model: NextVisitModel, config: TrainConfig, cooc: Cooccurrence) -> None:
    """The model's base embeddings from GloVe on the training visits' co-occurrence counts."""
    vectors = cached_glove(cooc, config.dim, config.glove_epochs, config.seed)
    # Raw GloVe vectors saturate tanh(sum of a visit's vectors) and make all visits alike: give
    # them the scale of the model's own random init (like_random_init says why; docs/training.md).
    model.embedder.init_base(like_random_init(vectors, cooc, model.embedder.config.init_std))


def cached_glove(cooc: Cooccurrence, dim: int, epochs: int, seed: int) -> torch.Tensor:
    """GloVe vectors of a co-occurrence matrix, cached by its content and the settings.

    HAP and GRAM at the same levels (or a re-run, or a resumed sweep) share one GloVe: in a paper
    reproduction it is most of the time spent before the first epoch.
    """
    shape = (cooc.size, cooc.size)
    digest = hashlib.sha256(f"glove-v2 {shape} {dim} {epochs} {seed}".encode())
    for part in (cooc.rows.astype(np.int64), cooc.cols.astype(np.int64), cooc.counts.astype(np.float64)):
        digest.update(part.tobytes())
    path = cache_dir() / "glove" / f"{digest.hexdigest()[:32]}.npy"
    if path.exists():
        try:
            return torch.from_numpy(np.load(path))
        except (OSError, ValueError):  # a damaged cache file: compute again
            pass
    vectors = train_glove(cooc, dim, epochs=epochs, seed=seed)
    try:
        with atomic_path(path, overwrite=True) as tmp, open(tmp, "wb") as handle:
            np.save(handle, vectors.numpy())
    except OSError:  # a read-only cache folder only costs the next run the time
        pass
    return vectors
