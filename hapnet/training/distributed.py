"""Data-parallel training on several processes: `torchrun --nproc-per-node N -m hapnet train ...`,
or `hapnet train --nproc N`, which launches exactly that (docs/scaling.md).

A run is distributed only when launched with WORLD_SIZE > 1 in its environment (torchrun sets
it); otherwise `SINGLE` stands for the one process and nothing here changes what `hapnet.train`
does. In a distributed run:

- every rank reads its shard of the patients only (`hapnet.training.run_data`: a patient's rank is
  a hash of its id), learns where each stands in the whole data, and builds the same model (rank
  0's weights are broadcast, as DDP does);
- every rank walks the same permutation of all the training patients each epoch and takes, from
  every global batch of `config.batch_size` patients, those it holds: a step sees the patients
  of a one-process step;
- `DistributedStep` sums the gradients after backward in one flat all-reduce, each rank's scaled
  by its share of the batch's patients, so the sum is the one-process gradient of the batch
  mean even where the slices differ in size (the last batch) or one is empty. The same
  all-reduce carries the loss and a "not finite" flag, so every rank takes the same decision.
  Not `DistributedDataParallel`: `TrainingStep` computes the objective from the model's pieces
  (the batch's code embeddings, the visit GRU, the loss, each compiled on its own with
  --compile), never through `model.forward`, and DDP reduces gradients only for a forward run
  through its wrapper. Parameters without a gradient on every rank keep none, as in one process
  (no `find_unused_parameters`); the embedders' index buffers are built, not trained, and never
  sent;
- dropout draws from torch's generator seeded with (seed, rank, epoch) at every epoch's start
  (`epoch_seed`): a run is deterministic for a given world size, resumed or not;
- validation and test: each rank scores the patients it holds and the accumulators' counts are
  summed (`merge_accumulator`): the figures of a one-process evaluation;
- rank 0 alone reads and writes the run folder (`from_main`) and shows progress.

A rank that dies ends the run: torchrun stops the others, and a rank left waiting in a
collective gives up after HAPNET_DIST_TIMEOUT seconds with one line (`PEER_LOST`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from hapnet.data.batches import Batch
from hapnet.errors import HapnetError, error_summary
from hapnet.models.predictor import NextVisitModel
from hapnet.training.step import TrainingStep
from hapnet.utils.device import resolve_device
from hapnet.utils.threads import usable_cores

TIMEOUT_VARIABLE = "HAPNET_DIST_TIMEOUT"
# Seconds a rank waits for the others in one collective: long enough for rank 0's GloVe on large
# data (the others wait for its weights), short enough that a stuck rank does not hold a job for hours.
DEFAULT_TIMEOUT = 1800
PEER_LOST = "lost contact with another rank"  # the launcher recognises these lines (a consequence)
T = TypeVar("T")


@dataclass(frozen=True)
class Process:
    """This process's place in a run: rank `rank` of `world_size`, `local_rank` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, name: str) -> torch.device:
        """The device `--device name` means for this rank: with CUDA, one GPU per rank of a
        machine, GPU LOCAL_RANK (an explicit cuda:N too: two ranks cannot share a GPU)."""
        device = resolve_device(name)
        if not self.distributed or device.type != "cuda":
            return device
        if self.local_rank >= torch.cuda.device_count():
            raise HapnetError(
                f"rank {self.rank}: LOCAL_RANK {self.local_rank}, but this machine has "
                f"{torch.cuda.device_count()} CUDA GPU(s): start at most one process per GPU"
            )
        device = torch.device("cuda", self.local_rank)
        torch.cuda.set_device(device)  # NCCL's collectives run on the current device
        return device


SINGLE = Process()


def environment() -> Process:
    """This process's place from torchrun's variables (WORLD_SIZE, RANK, LOCAL_RANK); `SINGLE`
    without them or with WORLD_SIZE 1."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise HapnetError(
            "WORLD_SIZE, RANK and LOCAL_RANK must be whole numbers (torchrun sets them)"
        ) from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise HapnetError(f"RANK {rank} / LOCAL_RANK {local} is not a rank of WORLD_SIZE {world}")
    return Process(rank, world, local) if world > 1 else SINGLE


def timeout_seconds() -> float:
    """How long a rank waits for the others in one collective ($HAPNET_DIST_TIMEOUT, seconds)."""
    text = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise HapnetError(f"{TIMEOUT_VARIABLE}={text!r}: expected a number of seconds above 0")
    return seconds


@contextmanager
def joined() -> Iterator[Process]:
    """The block inside the run's process group: joined from torchrun's environment and left
    afterwards (or the caller's own group, left to the caller); `SINGLE` without torchrun.

    Collectives of CPU tensors (counts, objects) go through gloo; where CUDA is available the
    gradients of GPU tensors go through NCCL ("cpu:gloo,cuda:nccl")."""
    process = environment()
    if not process.distributed:
        yield SINGLE
        return
    if not dist.is_available():
        raise HapnetError("this torch build has no torch.distributed: train in one process (no torchrun)")
    if dist.is_initialized():  # the caller's own group: it must hold CPU collectives (gloo)
        yield Process(dist.get_rank(), dist.get_world_size(), process.local_rank)
        return
    cuda = torch.cuda.is_available() and dist.is_nccl_available()
    try:
        dist.init_process_group(
            "cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_seconds())
        )
    except (RuntimeError, ValueError) as exc:
        raise HapnetError(
            f"rank {process.rank} of {process.world_size} could not join the distributed run "
            f"({error_summary(exc)}); launch it with torchrun or `hapnet train --nproc N`"
        ) from None
    try:
        with warnings.catch_warnings():
            if not process.is_main:  # rank 0 speaks for the run (the load gathers every rank's)
                warnings.simplefilter("ignore")
            yield process
        with _collective("finishing"):  # no rank leaves before rank 0 has written the run folder
            dist.barrier()
    finally:
        dist.destroy_process_group()


@contextmanager
def _collective(what: str) -> Iterator[None]:
    """A collective's failure (a rank died or did not answer in time) as one line."""
    try:
        yield
    except RuntimeError as exc:  # DistBackendError, DistNetworkError, a timeout: all RuntimeErrors
        raise HapnetError(
            f"{PEER_LOST} while {what} ({error_summary(exc)}): it stopped, was killed, or did not answer "
            f"within {timeout_seconds():g} s (${TIMEOUT_VARIABLE})"
        ) from None


@contextmanager
def labelled(process: Process) -> Iterator[None]:
    """A rank other than 0 says which it is in its error lines: torchrun merges every rank's
    output, and rank 0's line is the run's (the launcher shows the others' only when it has none)."""
    try:
        yield
    except HapnetError as exc:
        if process.is_main or str(exc).startswith("rank "):
            raise
        raise HapnetError(f"rank {process.rank}: {exc}") from None


# ----------------------------------------------------------------------------- sharing work
def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """The seed of torch's generator (dropout masks) for one rank's epoch."""
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0])


def from_main(process: Process, produce: Callable[[], T], *, share: bool = True) -> T | None:
    """`produce()` run by rank 0 alone (reading or starting the run folder). Its `HapnetError`
    (or `OSError`) is raised on every rank, in the same words (no rank is left waiting); its
    result goes to every rank with `share`, else the others get None."""
    if not process.distributed:
        return produce()
    outcome: list[Any] = [None]
    value, error = None, None
    if process.is_main:
        try:
            value = produce()
            outcome[0] = ("ok", value if share else None)
        except (HapnetError, OSError) as exc:  # what the CLI reports in one line
            error = exc
            outcome[0] = ("error", str(exc))
    with _collective("waiting for rank 0"):
        dist.broadcast_object_list(outcome, src=0)
    kind, payload = outcome[0]
    if error is not None:
        raise error
    if kind == "error":
        raise HapnetError(payload)
    return value if process.is_main else payload


def check_same(process: Process, value: str, what: str) -> None:
    """Refuse, on every rank in the same words, when the ranks hold different `value`s."""
    if not process.distributed:
        return
    values = all_gather(process, value, f"the ranks' {what} to compare")
    other = next((rank for rank, v in enumerate(values) if v != values[0]), None)
    if other is not None:
        raise HapnetError(
            f"the ranks' {what} differ (rank 0: {str(values[0])[:12]}, "
            f"rank {other}: {str(values[other])[:12]}): every rank must read the same data"
        )


def broadcast_module(module: torch.nn.Module, process: Process) -> None:
    """Rank 0's parameters and buffers on every rank, as DDP does when it wraps a model."""
    if not process.distributed:
        return
    with _collective("receiving rank 0's weights"):
        for tensor in module.state_dict().values():  # views of the parameters: filled in place
            dist.broadcast(tensor, src=0)


def sum_arrays(process: Process, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The element-wise sums over the ranks of `arrays` (the same shapes on every rank), in one
    all-reduce; integer counts stay exact (summed as float64: exact below 2**53)."""
    arrays = [np.asarray(a) for a in arrays]
    if not process.distributed or not arrays:
        return arrays
    flat = torch.from_numpy(np.concatenate([a.astype(np.float64).ravel() for a in arrays]))
    with _collective("summing evaluation counts"):
        dist.all_reduce(flat)
    summed, offset = [], 0
    for a in arrays:
        part = flat[offset : offset + a.size].numpy().reshape(a.shape)
        summed.append(np.rint(part).astype(a.dtype) if a.dtype.kind in "iub" else part.astype(a.dtype))
        offset += a.size
    return summed


def all_gather(process: Process, value: T, what: str) -> list[T]:
    """Every rank's `value` (small: counts, order keys, sums), in rank order, on every rank."""
    if not process.distributed:
        return [value]
    values: list[Any] = [None] * process.world_size
    with _collective(f"gathering {what}"):
        dist.all_gather_object(values, value)
    return values


def gather_to_main(process: Process, value: T, what: str) -> list[T] | None:
    """Every rank's `value` in rank order on rank 0 alone (larger: co-occurrence counts, patient
    ids); None on the other ranks."""
    if not process.distributed:
        return [value]
    values: list[Any] | None = [None] * process.world_size if process.is_main else None
    with _collective(f"gathering {what}"):
        dist.gather_object(value, values, dst=0)
    return values


def gather_lists(process: Process, items: list[Any]) -> list[Any]:
    """Every rank's `items` (per-batch arrays: raw scores), one list in rank order."""
    if not process.distributed:
        return items
    gathered: list[Any] = [None] * process.world_size
    with _collective("gathering evaluation scores"):
        dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


def merge_accumulator(accumulator: Any, process: Process) -> None:
    """Make an evaluation accumulator hold what one process that saw every rank's patients would.
    Its state, by kind:

    - a `state` dict of arrays that add up (`VisitScores`): summed key by key;
    - a dataclass's fields that are not arguments (`field(init=False)`: `AccuracyAtK`'s hits and
      totals): summed, or concatenated where a field is a list;
    - lists (the per-batch raw scores kept for the AUCs: `ScoreCollector`): concatenated in rank
      order.

    Its arguments (k, groups, ks) are settings, the same on every rank. Sums are the same on every
    rank (one all-reduce), so every rank takes the same decisions from them."""
    if not process.distributed:
        return
    owners: list[tuple[Any, str]] = []  # (object, key) of every summed value
    if isinstance(getattr(accumulator, "state", None), dict):
        owners += [(accumulator.state, key) for key in sorted(accumulator.state)]
    fields = dataclasses.fields(accumulator) if dataclasses.is_dataclass(accumulator) else ()
    names = [f.name for f in fields if not f.init]
    names += [n for n, v in vars(accumulator).items() if isinstance(v, list) and not n.startswith("_")]
    for name in dict.fromkeys(names):
        if isinstance(getattr(accumulator, name), list):
            setattr(accumulator, name, gather_lists(process, getattr(accumulator, name)))
        else:
            owners.append((accumulator, name))
    if not owners and not names:
        raise TypeError(f"{type(accumulator).__name__}: no state to merge across ranks")
    values = [_get(owner, key) for owner, key in owners]
    totals = sum_arrays(process, [_numpy(value) for value in values])
    for (owner, key), value, total in zip(owners, values, totals, strict=True):
        _set(owner, key, _like(value, total))


def merge_totals(
    process: Process, accumulators: Sequence[Any], totals: dict[str, float], count: int
) -> tuple[dict[str, float], int]:
    """An evaluation's accumulators (merged in place), its loss sums and its patient count, summed
    over the ranks: each rank scored the patients it holds."""
    for accumulator in accumulators:
        merge_accumulator(accumulator, process)
    (summed,) = sum_arrays(process, [np.array([*totals.values(), count], dtype=np.float64)])
    return dict(zip(totals, summed[:-1].tolist(), strict=True)), int(summed[-1])


def _get(owner: Any, key: str) -> Any:
    return owner[key] if isinstance(owner, dict) else getattr(owner, key)


def _set(owner: Any, key: str, value: Any) -> None:
    if isinstance(owner, dict):
        owner[key] = value
    else:
        setattr(owner, key, value)


def _numpy(value: Any) -> np.ndarray:
    if torch.is_tensor(value):
        return value.detach().cpu().numpy()
    if isinstance(value, (bool, int, float, np.ndarray, np.generic)):
        return np.asarray(value)
    raise TypeError(f"cannot merge accumulator state of type {type(value).__name__} across ranks")


def _like(original: Any, total: np.ndarray) -> Any:
    """`total` in the type of `original` (a tensor on its device, a Python number, an array)."""
    if torch.is_tensor(original):
        return torch.from_numpy(total).to(original.device)
    if isinstance(original, (bool, int, float)):
        return type(original)(total.item())
    return total


# ----------------------------------------------------------------------------- the step
class DistributedStep(TrainingStep):
    """`TrainingStep` for one rank: `step(batch, share)` computes this rank's gradients of its
    slice (`batch`; None when the slice is empty), then one all-reduce sums over the ranks each
    gradient scaled by `share` (this rank's patients / the global batch's), with the loss and a
    "not finite" flag; every rank then updates identically. Returns the global batch's mean
    diagnosis loss (NaN, and no update, where any rank's objective was not finite).

    Scaling the gradient by n_r / N and summing is DDP's "loss x n_r * W / N, then average" in
    fewer operations: both give the one-process gradient of the mean over the N patients."""

    def __init__(
        self,
        model: NextVisitModel,
        optimizer: torch.optim.Optimizer,
        loss: str,
        process: Process,
        compile: bool = False,
    ):
        super().__init__(model, optimizer, loss, compile=compile)
        self.process = process
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.numel = sum(p.numel() for p in self.params)
        # TrainingStep calls `self.update()` after backward: sum the gradients first.
        self.apply_update, self.update = self.update, self._all_reduce_then_update
        self.share = 1.0
        self.local_loss: torch.Tensor | None = None
        self.global_loss: torch.Tensor | None = None
        self.reduce_seconds = 0.0  # in the all-reduce, waiting for the slowest rank included

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        objective, loss = super().forward(batch)
        self.local_loss = loss.detach()
        return objective, loss

    def __call__(self, batch: Batch | None, share: float = 1.0) -> torch.Tensor:  # type: ignore[override]
        self.share, self.global_loss = share, None
        if batch is not None:
            super().__call__(batch)
        if self.global_loss is None:  # an empty slice, or TrainingStep stopped at a non-finite objective
            self.optimizer.zero_grad(set_to_none=True)
            self.local_loss = torch.tensor(0.0 if batch is None else float("nan"))
            self.update()  # every rank joins every all-reduce
        assert self.global_loss is not None
        return self.global_loss

    def _all_reduce_then_update(self) -> None:
        first = self.params[0]
        device, dtype = first.device, first.dtype
        local = self.local_loss.to(device, dtype).reshape(1)  # type: ignore[union-attr]
        finite = torch.isfinite(local)
        grads = [
            (torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1).to(dtype) for p in self.params
        ]
        has_grad = torch.tensor([p.grad is not None for p in self.params], dtype=dtype, device=device)
        # [gradients, loss | has a gradient per parameter, not finite]: the first part scaled by the share
        bucket = torch.cat([*grads, torch.where(finite, local, 0.0), has_grad, (~finite).to(dtype)])
        bucket[: self.numel + 1].mul_(self.share)
        started = time.perf_counter()
        with _collective("summing gradients"):
            dist.all_reduce(bucket)
        tail = bucket[self.numel :].tolist()  # waits for the result
        self.reduce_seconds += time.perf_counter() - started
        if tail[-1] > 0:  # a rank's objective was not finite: nobody updates, the trainer stops
            self.global_loss = torch.tensor(float("nan"))
            self.optimizer.zero_grad(set_to_none=True)
            return
        self.global_loss = torch.tensor(tail[0], dtype=dtype)
        offset = 0
        for p, count in zip(self.params, tail[1:-1], strict=True):
            # no gradient on any rank: none here either (an optimiser skips it, as in one process)
            p.grad = bucket[offset : offset + p.numel()].view_as(p).to(p.dtype) if count > 0 else None
            offset += p.numel()
        self.apply_update()


# ----------------------------------------------------------------------------- the launcher
_AGENT_LOG = re.compile(r"^[DIWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ")  # torchrun's own log lines
_RANK_ERROR = re.compile(r"^error: rank \d+: ")


def launch_command(arguments: Sequence[str], nproc: int) -> list[str]:
    """`python -m torch.distributed.run --nproc-per-node N --standalone -m hapnet train ARGS`:
    N ranks on this machine, meeting at a free port of localhost."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--standalone",
        "-m",
        "hapnet",
        "train",
        *arguments,
    ]


class LaunchOutput:
    """What the launcher shows of torch.distributed.run's stderr (the ranks' lines and its own):

    - torchrun's log lines and its failure report (a traceback, then a table) are kept back; the
      report names the rank that failed first and its exit code or signal;
    - rank 0's error lines are shown, each once (every rank reports an error they share); other
      ranks' ("error: rank R: ...") and the "lost contact" ones are kept for `failure_line`,
      which explains a failure no shown line did;
    - warnings are shown once each, every other line as it comes."""

    def __init__(self) -> None:
        self.shown: set[str] = set()
        self.held: list[str] = []
        self.report: list[str] = []
        self.explained = False  # a rank-0 error line was shown
        self.lost: set[int] = set()  # ranks that reported losing a peer
        self.terminated = False  # the launcher was asked to stop (SIGTERM)

    def feed(self, line: str) -> str | None:
        """The line to show for this line of output (None: keep it back)."""
        text = line.rstrip("\n")
        if self.report or text.startswith("Traceback (most recent call last)"):
            self.report.append(text)
            return None
        if _AGENT_LOG.match(text) or text.startswith("Setting OMP_NUM_THREADS") or set(text.strip()) == {"*"}:
            return None
        if text.startswith("error: "):
            if PEER_LOST in text:  # a consequence: which rank lost its peer
                rank = _RANK_ERROR.match(text)
                self.lost.add(int(text.split()[2].rstrip(":")) if rank else 0)
            if _RANK_ERROR.match(text) or PEER_LOST in text:
                self.held.append(text[len("error: ") :])
                return None
            self.explained = True
        if text.startswith(("error: ", "warning: ")):
            if text in self.shown:
                return None
            self.shown.add(text)
        return line

    def root_cause(self) -> tuple[int | None, int | None]:
        """(rank, exit code) of the failure that ended the run, from torchrun's report; a signal
        is negative. torchrun names the first failure it observed, but that may be a consequence
        of another rank's end, seen sooner: a rank that lost its peer (its "lost contact" line, or
        gloo's SIGABRT) or that torchrun stopped (SIGTERM). The first failure that is no
        consequence (a kill, an error of its own) is the cause."""
        text = "\n".join(self.report)
        failures = [
            (int(rank), int(code))
            for rank, code in re.findall(
                r"\brank\s*:\s*(\d+)[^\n]*\n(?:.*\n)*?\s*exitcode\s*:\s*(-?\d+)", text
            )
        ]
        cause = text.split("Root Cause", 1)[-1]
        rank = re.search(r"\brank\s*:\s*(\d+)", cause)
        code = re.search(r"\bexitcode\s*:\s*(-?\d+)", cause)
        first = (int(rank.group(1)) if rank else None, int(code.group(1)) if code else None)
        consequences = (-signal.SIGABRT, -signal.SIGTERM)
        causes = [f for f in [first, *failures] if f[1] not in consequences and f[0] not in self.lost]
        return causes[0] if causes else first

    def failure_line(self, code: int) -> str | None:
        """The line that explains a failed run where no shown line did (None: one did)."""
        if self.explained:
            return None
        if self.terminated:
            return "stopped by SIGTERM; torchrun stopped the ranks"
        rank, exitcode = self.root_cause()
        if exitcode is not None and exitcode < 0:
            try:
                name = signal.Signals(-exitcode).name
            except ValueError:
                name = f"signal {-exitcode}"
            return f"rank {rank} was killed by {name}; torchrun stopped the other ranks"
        own = [line for line in self.held if PEER_LOST not in line]
        if own or self.held:
            return (own or self.held)[0]
        return f"the distributed run failed (torch.distributed.run exited with code {code})"

    def exit_code(self, code: int) -> int:
        """The run's exit code: the first failed rank's where it is hapnet's (1, 2, 130), else 1."""
        if code == 0:
            return 0
        exitcode = self.root_cause()[1]
        return exitcode if exitcode in (1, 2, 130) else 1


def launch(arguments: Sequence[str], nproc: int) -> tuple[int, str | None]:
    """`hapnet train ARGS` on `nproc` processes of this machine, through torch.distributed.run in
    a subprocess: (exit code, the line that explains a failure where the ranks' own did not).

    Each rank gets OMP_NUM_THREADS = this machine's cores / nproc unless it is set. Ctrl-C stops
    every rank (torchrun forwards it); so does a SIGTERM to this process. With HAPNET_TRACEBACK=1
    torchrun's output is shown as it is."""
    if not dist.is_available():
        raise HapnetError("--nproc: this torch build has no torch.distributed")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, usable_cores() // nproc)))
    command = launch_command(arguments, nproc)
    if os.environ.get("HAPNET_TRACEBACK") == "1":
        return subprocess.call(command, env=env), None
    output = LaunchOutput()
    child = subprocess.Popen(command, stderr=subprocess.PIPE, env=env, text=True, errors="replace")
    main_thread = threading.current_thread() is threading.main_thread()  # where handlers can be set
    forward = signal.getsignal(signal.SIGTERM)

    def stop(*_: Any) -> None:  # torchrun stops its ranks on SIGTERM
        output.terminated = True
        child.terminate()

    if main_thread:  # for this call only
        signal.signal(signal.SIGTERM, stop)
    try:
        assert child.stderr is not None
        for line in child.stderr:
            shown = output.feed(line)
            if shown is not None:
                sys.stderr.write(shown)
                sys.stderr.flush()
        code = child.wait()
    except BaseException:  # Ctrl-C: a terminal sent it to torchrun too, which stops the ranks
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:  # it did not get it: ask it to stop them
            child.terminate()
            child.wait()
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, forward)
    return output.exit_code(code), None if code == 0 else output.failure_line(code)
