"""The nearest codes of a code in a table of embeddings, by cosine similarity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from hapnet.embeddings.formats import EmbeddingTable, read_embeddings
from hapnet.embeddings.structure import EmbedResult
from hapnet.errors import HapnetError, check_k
from hapnet.ontology.codes import normalize_code


def _lookup(table: EmbeddingTable, code: str, source: str) -> int:
    """Row of `code`: as written, normalised (`038.9` -> `0389`), spaces as `_`, or any case."""
    index = table.index()
    for candidate in (code, code.strip(), normalize_code(code), "_".join(code.split())):
        if candidate in index:
            return index[candidate]
    folded = {c.casefold(): i for c, i in index.items()}
    if code.strip().casefold() in folded:
        return folded[code.strip().casefold()]
    raise HapnetError(f"{source}: unknown code {code!r} (not among its {len(table):,} codes)")


def neighbors(
    embeddings: EmbeddingTable | EmbedResult | str | Path, code: str, k: int = 10
) -> tuple[pd.Series, pd.DataFrame]:
    """The `k` codes nearest to `code` by cosine similarity: (the code's own row, the neighbours).

    `embeddings` is a table, an `embed` result, or a file in any format `hapnet embed` writes.
    Each frame row: rank, code, description, level, similarity.
    """
    check_k(k)
    source = "embeddings"
    if isinstance(embeddings, EmbedResult):
        table = embeddings.table
    elif isinstance(embeddings, EmbeddingTable):
        table = embeddings
    else:
        source = str(embeddings)
        table = read_embeddings(embeddings)
    row = _lookup(table, code, source)
    x = F.normalize(torch.from_numpy(table.vectors), dim=1)
    sims = x @ x[row]
    sims[row] = -torch.inf
    best = torch.topk(sims, min(k, len(table) - 1)).indices.numpy()
    levels = table.levels if table.levels is not None else np.full(len(table), -1)

    def rows(indices: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "code": [table.codes[i] for i in indices],
                "description": [table.descriptions[i] for i in indices],
                "level": levels[indices],
                "similarity": sims[indices].numpy().astype(np.float64) if len(indices) else [],
            }
        )

    frame = rows(best)
    frame.insert(0, "rank", np.arange(1, len(frame) + 1))
    query = pd.Series(
        {"code": table.codes[row], "description": table.descriptions[row], "level": levels[row]}
    )
    return query, frame
