"""Benchmark: the memory one rank of a distributed run needs to read its shard of the data.

    python benchmarks/bench_shards.py [--patients 200000] [--ranks 1,2,4,8] [--format csv|meds]

Writes a synthetic data set of `--patients` patients (a `hapnet synth` long CSV, or the same
visits as a MEDS folder), then, for each number of ranks R, loads rank 0's shard of R
(`hapnet.data.loaders.load_shard`; R = 1 is the whole data) in a fresh process and prints its
peak resident memory above what the process held before (Python, torch, hapnet imported, the
ontology loaded; Linux: the peak is reset through /proc/self/clear_refs), the bytes of
the loaded arrays, the patients kept and the seconds taken. Every rank reads the whole file
(block by block) but keeps only its patients' rows: memory falls with the ranks, time does not.
Not a test: figures for docs/scaling.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MARK = "BENCH_SHARDS "


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS: now; VmHWM: the peak)."""
    with open("/proc/self/status") as status:
        line = next(x for x in status if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def reset_peak() -> float:
    """Start measuring the peak afresh (Linux: clear_refs 5 resets VmHWM); the memory now."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    return _status_mb("VmRSS")


def worker(path: str, ontology_name: str, ranks: int) -> None:
    import hapnet  # noqa: F401  (the baseline includes the library and torch)
    from hapnet.data.loaders import load_shard
    from hapnet.data.sharding import PatientShard
    from hapnet.ontology.builtins import load_ontology

    ontology = load_ontology(ontology_name)
    baseline = reset_peak()  # the imports' and the ontology's own peak is not the shard's
    started = time.perf_counter()
    data, _ = load_shard(path, ontology, PatientShard(0, ranks))
    seconds = time.perf_counter() - started
    arrays = data.patient_offsets.nbytes + data.visit_offsets.nbytes + data.codes.nbytes
    result = {
        "ranks": ranks,
        "patients": data.num_patients,
        "codes": len(data.codes),
        "array_mb": arrays / 2**20,
        "peak_mb": _status_mb("VmHWM") - baseline,
        "seconds": seconds,
    }
    print(MARK + json.dumps(result), flush=True)


def write_meds(csv_folder: Path, out: Path) -> Path:
    """The synthetic visits as a MEDS folder (one diagnosis event per row, ICD9CM//code)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = pd.read_csv(csv_folder / "visits.csv.gz")
    events = pd.DataFrame(
        {
            "subject_id": frame["patient"].astype("int64"),
            "time": pd.to_datetime(frame["time"]),
            "code": "ICD9CM//" + frame["code"].astype(str),
        }
    )
    (out / "data").mkdir(parents=True)
    (out / "metadata").mkdir()
    schema = pa.schema([("subject_id", pa.int64()), ("time", pa.timestamp("us")), ("code", pa.string())])
    table = pa.Table.from_pandas(events, preserve_index=False).cast(schema)
    pq.write_table(table, out / "data" / "0.parquet")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=200_000)
    parser.add_argument("--ranks", default="1,2,4,8", help="numbers of ranks, comma-separated")
    parser.add_argument("--format", choices=["csv", "meds"], default="csv")
    parser.add_argument("--ontology", default="icd9-ccs")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker[0], args.worker[1], int(args.worker[2]))

    from hapnet.data.synth import write_synth

    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        path = Path(folder) / "synth"
        write_synth(path, args.ontology, patients=args.patients, seed=0)
        if args.format == "meds":
            path = write_meds(path, Path(folder) / "meds")
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        print(
            f"{args.patients:,} synthetic patients as {args.format} ({size / 2**20:.0f} MB on disk), "
            f"written in {time.perf_counter() - started:.0f} s; rank 0's shard of R ranks:"
        )
        whole = None
        for ranks in [int(r) for r in args.ranks.split(",")]:
            command = [sys.executable, __file__, "--worker", str(path), args.ontology, str(ranks)]
            child = subprocess.run(command, capture_output=True, text=True, timeout=3600)
            if child.returncode != 0:
                sys.exit(f"{' '.join(command)} failed:\n{child.stderr[-3000:]}")
            line = next(x for x in child.stdout.splitlines() if x.startswith(MARK))
            result = json.loads(line[len(MARK) :])
            whole = whole or result
            print(
                f"  R={ranks}: {result['patients']:,} patients, {result['codes']:,} codes; arrays "
                f"{result['array_mb']:.0f} MB; peak above the start {result['peak_mb']:.0f} MB "
                f"({result['peak_mb'] / whole['peak_mb']:.2f}x the whole); {result['seconds']:.1f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
