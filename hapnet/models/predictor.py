"""The visit-level GRU that predicts the codes of the next visit (docs/algorithms.md, "the task").

Visit vector v_t = tanh(sum of g_c over the visit's codes), built from code ids with
`embedding_bag` (no dense multi-hot matmul). `torch.nn.GRU` reads v_1..v_T as a packed sequence
(no GRU work on padding: about 5/6 of a batch of MIMIC-like patients); prediction heads read its
(dropped-out) states. Heads live in a ModuleDict so that more tasks can be trained jointly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from hapnet.data.batches import Batch
from hapnet.models.embedder import CodeEmbedder

DIAGNOSIS = "diagnosis"


class Dropout(nn.Dropout):
    """nn.Dropout drawing its mask from uniforms, on every device: torch's CPU dropout draws
    Bernoulli numbers one by one (~0.9 ms for a [165, 400] batch of states against ~0.3 ms).
    Same distribution: each entry kept with probability 1 - p and scaled by 1 / (1 - p)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not 0.0 < self.p < 1.0:
            return super().forward(x)
        keep = torch.rand_like(x).ge_(self.p).mul_(1.0 / (1.0 - self.p))
        return x * keep


class TiedOutput(nn.Module):
    """The diagnosis head with ontology-aware rows: code c's output weights are computed from its
    final embedding, w_c = W g_c + u_c, so a rare code's row shares what its ancestors learned
    (through g_c) and keeps a free part u_c of its own. Logits: h . w_c + b_c."""

    def __init__(self, dim: int, hidden: int, num_codes: int):
        super().__init__()
        self.project = nn.Linear(dim, hidden, bias=False)
        self.free = nn.Parameter(torch.empty(num_codes, hidden))
        self.bias = nn.Parameter(torch.zeros(num_codes))
        bound = hidden**-0.5  # as nn.Linear(hidden, num_codes) initialises its weight
        nn.init.uniform_(self.free, -bound, bound)

    def forward(self, states: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return F.linear(states, self.project(g) + self.free, self.bias)


OUTPUTS = ("free", "tied")  # also the choices of `TrainConfig.output`
TASK_WEIGHTS = ("learned", "equal")


class NextVisitModel(nn.Module):
    """Code embedder (HAP, GRAM, ...) + visit GRU + one head per task.

    `output`: "free" (the paper's linear layer) or "tied" (`TiedOutput`). `aux_classes`: the
    auxiliary tasks (name -> number of classes), each a linear head on the same GRU states.
    `task_weights` "learned" adds one log-variance per task (Kendall, Gal & Cipolla 2018; used by
    `hapnet.models.losses.multi_task_loss`). `time_input`: the GRU also reads each visit's gap.
    """

    def __init__(
        self,
        embedder: CodeEmbedder,
        num_codes: int,
        dim: int,
        hidden: int,
        dropout: float,
        *,
        output: str = "free",
        aux_classes: dict[str, int] | None = None,
        task_weights: str = "learned",
        time_input: bool = False,
    ):
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if task_weights not in TASK_WEIGHTS:
            raise ValueError(f"task_weights must be one of {TASK_WEIGHTS}, got {task_weights!r}")
        self.embedder = embedder
        self.num_codes = num_codes
        self.output = output
        self.time_input = time_input
        self.gru = nn.GRU(dim + int(time_input), hidden, batch_first=True)
        self.dropout = Dropout(dropout)
        diagnosis = TiedOutput(dim, hidden, num_codes) if output == "tied" else nn.Linear(hidden, num_codes)
        aux_classes = dict(aux_classes or {})
        self.heads = nn.ModuleDict(
            {DIAGNOSIS: diagnosis, **{n: nn.Linear(hidden, c) for n, c in aux_classes.items()}}
        )
        self.task_log_vars = (
            nn.Parameter(torch.zeros(len(self.heads))) if aux_classes and task_weights == "learned" else None
        )

    @property
    def tasks(self) -> list[str]:
        """The heads' names, the diagnosis first (the order of `task_log_vars`)."""
        return list(self.heads)

    def code_embeddings(self) -> torch.Tensor:
        """Final embeddings g of the observable codes, [num_codes, dim]."""
        return self.embedder()

    def batch_embeddings(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(g, codes): embeddings, and the batch's input codes as rows of g.

        Only the codes of the input visits reach the loss, unless the output is tied to g. Where
        the embedder can embed just those for much less (HAP, GRAM), it does: the loss and every
        gradient are the same as with all codes embedded. On MIMIC-III-sized data, 100 patients
        have ~1/6 of the codes."""
        if self.embedder.subset_is_cheaper and self.output == "free":
            return self.embedder.embed(batch.input_classes), batch.input_local
        return self.code_embeddings(), batch.input_codes

    def forward(self, batch: Batch, code_embeddings: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Logits per head for the real steps of the batch: {"diagnosis": [S, num_codes], ...}.
        `code_embeddings`: g of every code, when the caller has it (evaluation computes it once)."""
        if code_embeddings is None:
            return self.read_visits(batch, *self.batch_embeddings(batch))
        return self.read_visits(batch, code_embeddings, batch.input_codes)

    def read_visits(self, batch: Batch, g: torch.Tensor, codes: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per head from embeddings g and the input codes as rows of g (with a tied
        output, g holds every code)."""
        # Packed, the GRU skips the padding steps (about 5/6 of a batch of MIMIC-like patients),
        # and the batch is built packed: no padded visit vectors, no unpacking.
        visits = torch.tanh(F.embedding_bag(codes, g, batch.input_offsets, mode="sum"))
        if self.time_input:
            visits = torch.cat([visits, batch.input_gaps.unsqueeze(1)], dim=1)
        packed = PackedSequence(visits, batch.batch_sizes, batch.sorted_indices, batch.unsorted_indices)
        rows = self.gru(packed)[0].data
        states = self.dropout(rows.index_select(0, batch.step_rows))
        logits = {}
        for name, head in self.heads.items():
            logits[name] = head(states, g) if isinstance(head, TiedOutput) else head(states)
        return logits
