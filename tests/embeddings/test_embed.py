"""`hapnet embed` / `hapnet neighbors`: reconstruction figures, learning from the structure,
export from a run, every output format, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score
from testdata import ONTOLOGY_FILES
from typer.testing import CliRunner

import hapnet
from hapnet.cli.main import app
from hapnet.data.synth import write_synth
from hapnet.embeddings.config import EmbedConfig
from hapnet.embeddings.formats import FORMATS, EmbeddingTable, read_embeddings, write_embeddings
from hapnet.embeddings.neighbors import neighbors
from hapnet.embeddings.reconstruction import reconstruction, relations
from hapnet.embeddings.structure import EmbedResult, embed, initial_embedder, train_structure
from hapnet.errors import HapnetError, InputError
from hapnet.ontology.graph import Ontology

runner = CliRunner()
FAST = ["--dim", "16", "--epochs", "10", "--device", "cpu"]


def run_cli(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def tree_edges() -> list[tuple[str, str]]:
    """3 chapters > 3 sections each > 2 codes each: 30 nodes below the root."""
    edges = []
    for chapter in "ABC":
        edges.append(("", chapter))
        for i in range(3):
            edges.append((chapter, f"{chapter}{i}"))
            edges.extend((f"{chapter}{i}", f"{chapter}{i}{j}") for j in range(2))
    return edges


@pytest.fixture(scope="module")
def tree() -> Ontology:
    return Ontology.from_edges("tree", tree_edges(), {c: f"code {c}" for _, c in tree_edges()})


@pytest.fixture(scope="module")
def tree_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onto") / "tree.csv"
    rows = ["code,parent,description"] + [f"{c},{p},code {c}" for p, c in tree_edges()]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def learned(tree: Ontology) -> EmbedResult:
    return embed(tree, dim=16, epochs=10, device="cpu")


# ----------------------------------------------------------------------------- reconstruction
def naive_reconstruction(x: np.ndarray, truth) -> tuple[float, float]:
    """Nickel & Kiela's protocol written as a loop: sklearn's AP, filtered ranks by counting."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    aps, ranks = [], []
    for u in range(len(x)):
        true = truth.targets[truth.offsets[u] : truth.offsets[u + 1]]
        if len(true) == 0:
            continue
        sims = x @ x[u]
        others = np.arange(len(x)) != u
        labels = np.isin(np.arange(len(x)), true)
        aps.append(average_precision_score(labels[others], sims[others]))
        negatives = sims[others & ~labels]
        ranks.extend(1 + (negatives > sims[v]).sum() for v in true)
    return float(np.mean(aps)), float(np.mean(ranks))


def test_reconstruction_by_hand():
    # Chain A - B - C (edges A-B, B-C) and a stray node D. Rankings by cosine:
    # A: B (neighbour) 0.8 vs D 0.9, C 0.0  -> B is 2nd: AP 1/2, rank 2
    # B: A 0.8, C 0.6 are both neighbours, D 0.72 -> A 1st, C 3rd: AP (1/1 + 2/3) / 2, ranks 1, 2
    # C: B 0.6 vs A 0.0, D 0.0 -> AP 1, rank 1
    onto = Ontology.from_edges("chain", [("A", "B"), ("B", "C"), ("", "D")])
    nodes = np.arange(1, len(onto))
    by_code = {"A": [1, 0, 0], "B": [0.8, 0.6, 0], "C": [0, 1, 0], "D": [0.9, 0, 0.43588989]}
    vectors = np.array([by_code[onto.ids[n]] for n in nodes])
    result = reconstruction(vectors, relations(onto, nodes))
    assert result.queries == 3 and result.pairs == 4
    assert result.map == pytest.approx((1 / 2 + (1 + 2 / 3) / 2 + 1) / 3)
    assert result.mean_rank == pytest.approx((2 + 1 + 2 + 1) / 4)


def test_ties_count_for_the_neighbour():
    # A's neighbour B and the stray D are equally similar to A: B counts as ranked first.
    onto = Ontology.from_edges("tie", [("A", "B"), ("", "D")])
    nodes = np.arange(1, len(onto))
    by_code = {"A": [1.0, 0.0], "B": [0.6, 0.8], "D": [0.6, -0.8]}
    result = reconstruction(np.array([by_code[onto.ids[n]] for n in nodes]), relations(onto, nodes))
    assert result.map == 1.0 and result.mean_rank == 1.0


def test_sort_key_orders_floats():
    from hapnet.embeddings.reconstruction import _descending_bits

    values = torch.tensor([0.5, -0.25, 3.0, -7.5, 1e-30, -1e-30, 0.0, 2.5e30, -2.5e30])
    order = torch.argsort(_descending_bits(values))
    assert torch.equal(values[order], torch.sort(values, descending=True).values)


@pytest.mark.parametrize("relation", ["edges", "ancestors"])
def test_blocked_reconstruction_equals_the_naive_loop(tree: Ontology, relation: str):
    generator = torch.Generator().manual_seed(0)
    nodes = np.arange(1, len(tree))
    x = torch.randn(len(nodes), 4, generator=generator)
    truth = relations(tree, nodes, relation)
    fast = reconstruction(x, truth, block_elements=70)  # a few rows per block
    expected_map, expected_rank = naive_reconstruction(x.numpy().astype(np.float64), truth)
    assert fast.map == pytest.approx(expected_map, abs=1e-6)
    assert fast.mean_rank == pytest.approx(expected_rank)


def test_sampled_relations_keep_their_rows(tree: Ontology):
    nodes = np.arange(1, len(tree))
    truth = relations(tree, nodes, "ancestors")
    sample = truth.sample(5, seed=3)
    rows = np.flatnonzero(sample.counts)
    assert len(rows) == 5 and sample.kind == "ancestors"
    for row in rows:
        kept = sample.targets[sample.offsets[row] : sample.offsets[row + 1]]
        np.testing.assert_array_equal(kept, truth.targets[truth.offsets[row] : truth.offsets[row + 1]])
    assert truth.sample(10_000) is truth


def test_relations_of_a_dag():
    onto = hapnet.load_ontology(ONTOLOGY_FILES / "dag.csv")
    nodes = np.arange(1, len(onto))
    truth = relations(onto, nodes, "edges")
    row = {onto.ids[n]: i for i, n in enumerate(nodes)}

    def related(truth, code: str) -> set[str]:
        start, end = truth.offsets[row[code]], truth.offsets[row[code] + 1]
        return {onto.ids[nodes[t]] for t in truth.targets[start:end]}

    assert related(truth, "C") == {"A", "B", "D"}  # both parents and the child
    assert related(relations(onto, nodes, "ancestors"), "D") == {"A", "B", "C"}


# ----------------------------------------------------------------------------- learning
def test_small_tree_is_recovered_perfectly(learned: EmbedResult, tree: Ontology):
    assert learned.reconstruction.map == 1.0
    assert learned.reconstruction.mean_rank == 1.0
    assert learned.table.codes == tree.ids[1:]  # every node but the artificial root
    assert learned.table.vectors.shape == (len(tree) - 1, 16)
    assert learned.metrics["map"] == 1.0 and learned.metrics["nodes"] == len(tree) - 1
    frame = learned.frame
    assert list(frame.columns[:4]) == ["code", "description", "level", "is_leaf"]
    assert frame.set_index("code").loc["A01", "is_leaf"] and not frame.set_index("code").loc["A0", "is_leaf"]


def test_same_seed_same_vectors(tree: Ontology, learned: EmbedResult):
    again = embed(tree, dim=16, epochs=10, device="cpu", evaluate=False)
    np.testing.assert_array_equal(again.table.vectors, learned.table.vectors)
    other = embed(tree, dim=16, epochs=10, device="cpu", evaluate=False, seed=1)
    assert not np.allclose(other.table.vectors, learned.table.vectors)


def test_vectors_are_the_propagated_embeddings(learned: EmbedResult):
    with torch.no_grad():
        final = learned.embedder.all_node_embeddings()[1:]
        base = learned.embedder.base.weight[1:]
    np.testing.assert_allclose(learned.table.vectors, final.numpy(), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(final, base)  # propagation changed them


def test_levels_and_plain_model(tree: Ontology):
    plain = embed(tree, dim=16, epochs=10, device="cpu", model="rnn")
    assert plain.reconstruction.map > 0.9
    truncated = embed(tree, dim=16, epochs=10, device="cpu", levels=2)
    assert truncated.settings["levels"] == 2 and truncated.reconstruction.map > 0.9


def test_neighbors_of_a_leaf_start_with_its_parent(learned: EmbedResult):
    query, frame = neighbors(learned, "a01", k=3)  # found case-insensitively
    assert query["code"] == "A01"
    assert frame["code"].iloc[0] == "A0"
    assert set(frame["code"]) == {"A0", "A00", "A"}  # then the family: sibling and grandparent
    assert list(frame["rank"]) == [1, 2, 3] and frame["similarity"].is_monotonic_decreasing
    with pytest.raises(HapnetError, match="unknown code 'ZZZ'"):
        neighbors(learned, "ZZZ")


# ----------------------------------------------------------------------------- formats
def spaced_table() -> EmbeddingTable:
    rng = np.random.default_rng(0)
    return EmbeddingTable(
        codes=["A 1", "B", "401.9"],
        vectors=rng.normal(size=(3, 5)).astype(np.float32) * 10.0 ** rng.integers(-6, 6, size=(3, 5)),
        descriptions=["first, with comma", 'quote " and\ttab', "hypertension"],
        levels=np.array([1, 2, 3]),
        is_leaf=np.array([False, True, True]),
    )


@pytest.mark.parametrize("suffix", sorted(FORMATS))
def test_every_format_round_trips(tmp_path: Path, suffix: str):
    table = spaced_table()
    path = tmp_path / f"emb{suffix}"
    written = write_embeddings(table, path)
    back = read_embeddings(path)
    np.testing.assert_array_equal(back.vectors, table.vectors)  # bit for bit, text formats too
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)
    if suffix in (".txt", ".w2v"):
        assert back.codes == ["A_1", "B", "401.9"]
    else:
        assert back.codes == table.codes
    if suffix in (".parquet", ".csv"):
        assert back.descriptions == table.descriptions
        assert back.levels.tolist() == [1, 2, 3] and back.is_leaf.tolist() == [False, True, True]
    if suffix == ".tsv":
        assert back.levels.tolist() == [1, 2, 3]
        assert back.descriptions[1] == 'quote " and tab'  # tabs would break the projector's columns


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".tsv"])
def test_tables_without_levels_round_trip(tmp_path: Path, suffix: str):
    bare = EmbeddingTable(["0010", "NA"], np.array([[1.5, -2.0], [0.0, 3.25]]))  # codes pandas likes to parse
    write_embeddings(bare, tmp_path / f"e{suffix}")
    back = read_embeddings(tmp_path / f"e{suffix}")
    assert back.codes == ["0010", "NA"] and back.levels is None and back.is_leaf is None
    np.testing.assert_array_equal(back.vectors, bare.vectors)


def test_word2vec_text_is_what_gensim_reads(tmp_path: Path):
    table = spaced_table()
    path = tmp_path / "emb.w2v"
    write_embeddings(table, path)
    lines = path.read_text().splitlines()
    assert lines[0] == "3 5"
    words = {}
    for line in lines[1:]:  # a reader of our own: word, then D numbers, space-separated
        word, *numbers = line.split(" ")
        words[word] = np.array(numbers, dtype=np.float32)
    assert list(words) == ["A_1", "B", "401.9"]
    np.testing.assert_array_equal(np.stack(list(words.values())), table.vectors)
    try:
        from gensim.models import KeyedVectors
    except ImportError:
        return
    vectors = KeyedVectors.load_word2vec_format(str(path), binary=False)
    np.testing.assert_array_equal(vectors["A_1"], table.vectors[0])


def test_projector_files(tmp_path: Path):
    write_embeddings(spaced_table(), tmp_path / "emb.tsv")
    assert (tmp_path / "emb.tsv").read_text().splitlines()[0].count("\t") == 4  # no header
    meta = (tmp_path / "emb.metadata.tsv").read_text().splitlines()
    assert meta[0] == "code\tdescription\tlevel" and meta[1] == "A 1\tfirst, with comma\t1"


def test_refuses_to_overwrite_unless_forced(tmp_path: Path):
    table = spaced_table()
    for suffix in (".csv", ".npy"):
        path = tmp_path / f"emb{suffix}"
        write_embeddings(table, path)
        before = path.read_bytes()
        with pytest.raises(InputError, match="already exists"):
            write_embeddings(EmbeddingTable(["X"], np.zeros((1, 2))), path)
        assert path.read_bytes() == before
        write_embeddings(EmbeddingTable(["X"], np.zeros((1, 2))), path, force=True)
        assert read_embeddings(path).codes == ["X"]


def test_a_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import pandas as pd

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", boom)
    with pytest.raises(RuntimeError):
        write_embeddings(spaced_table(), tmp_path / "emb.parquet")
    assert list(tmp_path.iterdir()) == []


def test_unknown_suffix_and_broken_files(tmp_path: Path):
    with pytest.raises(HapnetError, match="unknown embedding format '.json'"):
        write_embeddings(spaced_table(), tmp_path / "emb.json")
    (tmp_path / "bad.w2v").write_text("2 3\nA 1 2 3\nB 1 2\n")
    with pytest.raises(InputError, match="line 3: expected a word and 3 numbers"):
        read_embeddings(tmp_path / "bad.w2v")
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(InputError, match="bad.npy"):
        read_embeddings(tmp_path / "bad.npy")


# ----------------------------------------------------------------------------- CLI
def test_cli_embed_then_neighbors(tmp_path: Path, tree_csv: Path):
    out, metrics = tmp_path / "tree.csv", tmp_path / "m.json"
    result = run_cli("embed", tree_csv, "-o", out, "--metrics", metrics, *FAST)
    assert result.exit_code == 0, result.output
    assert "MAP" in result.output and "1.0000" in result.output
    figures = json.loads(metrics.read_text())
    assert figures["map"] == 1.0 and figures["mean_rank"] == 1.0 and figures["nodes"] == 30
    assert figures["seconds"] > 0 and figures["similarity"] == "cosine"
    result = run_cli("neighbors", out, "B21", "-k", "2")
    assert result.exit_code == 0, result.output
    assert "Nearest to B21" in result.output and "B2 " in result.output

    again = run_cli("embed", tree_csv, "-o", out, *FAST)  # no --force: refused before training
    assert again.exit_code == 2 and "already exists (use --force" in again.output
    assert len(again.output.strip().splitlines()) == 1


def test_cli_default_output_name(tmp_path: Path, tree_csv: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    result = run_cli("embed", tree_csv, "--dim", "8", "--epochs", "2", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert read_embeddings(tmp_path / "tree.embeddings.parquet").dim == 8


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    data = write_synth(folder / "data", "icd9-ccs", patients=120, seed=1)
    settings = dict(epochs=1, dim=8, hidden=8, attention_dim=4, device="cpu", levels=3)
    hapnet.train(model="hap", data=str(data), out=folder / "run", **settings)
    return folder / "run"


def test_from_run_exports_the_trained_embeddings(small_run: Path, tmp_path: Path, tree_csv: Path):
    result = embed("icd9-ccs", from_run=small_run)
    run = hapnet.load(small_run)
    onto, used = run.ontology, run.ontology.truncate(3)
    observable = [onto.index(code) for code in run.codes]
    categories = {a for node in observable for a in used.ancestors(node)} - {0}
    assert sorted(onto.index(code) for code in result.table.codes) == sorted(set(observable) | categories)
    assert any(used.levels[c] < onto.depth for c in categories)  # category nodes are in, not only codes
    with torch.no_grad():
        every = run.model.embedder.all_node_embeddings().numpy()
    rows = [onto.index(code) for code in result.table.codes]
    np.testing.assert_array_equal(result.table.vectors, every[rows])
    # the observable codes' vectors are the run's own final embeddings (another computation path)
    saved = np.load(small_run / "code_embeddings.npy")
    position = {code: i for i, code in enumerate(result.table.codes)}
    exported = result.table.vectors[[position[code] for code in run.codes]]
    np.testing.assert_allclose(exported, saved, rtol=1e-5, atol=1e-6)
    assert 0 < result.reconstruction.map <= 1 and result.settings["from_run"] == str(small_run)
    by_run = embed("icd9-ccs", from_run=run, evaluate=False)  # a loaded Run works as its folder does
    assert by_run.table.codes == result.table.codes and by_run.settings == result.settings
    np.testing.assert_array_equal(by_run.table.vectors, result.table.vectors)

    out = tmp_path / "run.w2v"
    cli = run_cli("embed", "icd9-ccs", "--from-run", small_run, "-o", out)
    assert cli.exit_code == 0, cli.output
    assert read_embeddings(out).codes == result.table.codes
    other = run_cli("embed", tree_csv, "--from-run", small_run, "-o", tmp_path / "x.csv")
    assert other.exit_code == 2 and "trained on ontology 'icd9-ccs', not on" in other.output
    assert len(other.output.strip().splitlines()) == 1


@pytest.mark.parametrize("epochs", [0, -1])
def test_fewer_than_one_epoch_is_refused_in_one_line(tree: Ontology, tree_csv: Path, tmp_path: Path, epochs):
    with pytest.raises(HapnetError, match=rf"^--epochs must be at least 1, got {epochs}$"):
        embed(tree, dim=8, epochs=epochs, device="cpu")
    out = tmp_path / "e.parquet"
    result = run_cli("embed", tree_csv, "-o", out, "--dim", "8", "--epochs", epochs, "--device", "cpu")
    assert (
        result.exit_code == 2 and result.output.strip() == f"error: --epochs must be at least 1, got {epochs}"
    )
    assert not out.exists()


def test_training_starts_from_the_initial_embedder(tree: Ontology):
    """The untrained baseline of bench_embed.py is where `train_structure` starts: one Adam step
    (which moves a parameter by at most lr) away from it."""
    config = EmbedConfig(dim=16, epochs=1, device="cpu")
    start = initial_embedder(tree, config).state_dict()
    again = initial_embedder(tree, config).state_dict()
    assert all(torch.equal(start[name], again[name]) for name in start)  # seeded
    trained, history = train_structure(tree, config)
    moved = max((trained.state_dict()[name] - start[name]).abs().max().item() for name in start)
    assert len(history) == 1 and 0 < moved <= config.lr * (1 + 1e-5)
    other = initial_embedder(tree, EmbedConfig(dim=16, device="cpu", seed=1)).state_dict()
    assert not all(torch.equal(start[name], other[name]) for name in start)


def test_from_run_on_a_folder_that_is_not_a_run(tmp_path: Path):
    result = run_cli("embed", "icd9-ccs", "--from-run", tmp_path, "-o", tmp_path / "e.parquet")
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and "not a hapnet run folder" in result.output
    assert not (tmp_path / "e.parquet").exists()


def test_from_run_refuses_training_options(tmp_path: Path):
    result = run_cli("embed", "icd9-ccs", "--from-run", tmp_path, "--dim", "8", "-o", tmp_path / "e.csv")
    assert result.exit_code == 2 and "--dim: not used with --from-run" in result.output


@pytest.mark.parametrize(
    ("content", "message"),
    [("code,parent\nA,B\nB,A\n", "cycle"), ("foo,bar\n1,2\n", "wrong columns"), ("", "empty file")],
)
def test_malformed_ontology_is_one_line_exit_2(tmp_path: Path, content: str, message: str):
    source = tmp_path / "bad.csv"
    source.write_text(content)
    result = run_cli("embed", source, "-o", tmp_path / "e.parquet", *FAST)
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "e.parquet").exists()


def test_neighbors_bad_input(tmp_path: Path):
    result = run_cli("neighbors", tmp_path / "missing.parquet", "4019")
    assert result.exit_code == 2 and "file not found" in result.output
    write_embeddings(spaced_table(), tmp_path / "e.csv")
    result = run_cli("neighbors", tmp_path / "e.csv", "nope")
    assert result.exit_code == 2 and "unknown code 'nope'" in result.output


# ----------------------------------------------------------------------------- garbage in, one line out
class _Trap:
    """Unpickling this creates a folder: a reader that unpickles leaves it behind."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __reduce__(self):  # noqa: ANN204
        import os

        return (os.mkdir, (str(self.folder / "UNPICKLED"),))


def test_a_pickle_is_never_loaded(tmp_path: Path):
    import pickle

    (tmp_path / "e.codes.txt").write_text("A\nB\n")
    (tmp_path / "e.npy").write_bytes(pickle.dumps(_Trap(tmp_path)))
    with pytest.raises(InputError) as caught:
        read_embeddings(tmp_path / "e.npy")
    assert (
        str(caught.value)
        == f"{tmp_path / 'e.npy'}: not a hapnet embeddings file (a Python pickle, never loaded)"
    )
    objects = np.empty((2, 2), dtype=object)
    objects[0, 0] = _Trap(tmp_path)
    np.save(tmp_path / "e.npy", objects, allow_pickle=True)  # a real .npy holding pickled objects
    with pytest.raises(InputError, match="e.npy: not a hapnet embeddings file"):
        read_embeddings(tmp_path / "e.npy")
    assert not (tmp_path / "UNPICKLED").exists()


def npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("e.npy", b"", "not a hapnet embeddings file (an empty file)"),
        ("e.npy", b"hello, world\n", "not a hapnet embeddings file (no .npy header)"),
        (
            "e.npy",
            b"PK\x03\x04rest",
            "not a hapnet embeddings file (a zip archive (.npz?), expected a .npy matrix)",
        ),
        (
            "e.npy",
            npy_bytes(np.zeros((2, 3)))[:-8],
            "not a hapnet embeddings file (truncated: its header promises more values",
        ),
        # a header promising 10^16 values: refused by the file's size, nothing allocated
        (
            "e.npy",
            npy_bytes(np.zeros((2, 3))).replace(b"(2, 3)", b"(99999999999, 99999)"),
            "not a hapnet embeddings file (truncated: its header promises more values",
        ),
        ("e.npy", npy_bytes(np.array(["a", "b"])), "not a hapnet embeddings file (<U1 values of shape (2,)"),
        ("e.npy", npy_bytes(np.float32(1.0)), "not a hapnet embeddings file (float32 values of shape ()"),
        ("e.parquet", bytes(range(256)), "not a hapnet embeddings file (Could not open Parquet input"),
        ("e.parquet", b"", "not a hapnet embeddings file ("),
        ("e.csv", b"", "not a hapnet embeddings file (No columns to parse from file)"),
        ("e.csv", b"\x80\x04\x95junk", "not a hapnet embeddings file ('utf-8' codec can't decode"),
        ("e.csv", b"code,level,e0\nA,x,1\n", "not a hapnet embeddings file (Unable to parse string"),
        ("e.csv", b"code,e0,e1\nA,1,2\nA,3,4\n", "code 'A' has two vectors"),
        ("e.csv", b"code,e0,e1\nA,1,2\nB,inf,4\n", "the vector of code 'B' holds NaN or infinity"),
        (
            "e.w2v",
            b"1 99999999999\nA 1 2\n",
            "line 2: expected a word and 99999999999 numbers, found 3 fields",
        ),
        ("e.w2v", bytes(range(256)), "binary data"),
        ("e.tsv", b"\xff\xfe\x00garbage", "not a tab-separated matrix of numbers"),
    ],
)
def test_garbage_of_every_format_is_one_line(tmp_path: Path, name: str, content: bytes, reason: str):
    path = tmp_path / name
    path.write_bytes(content)
    (tmp_path / "e.codes.txt").write_text("A\nB\n")
    with pytest.raises(InputError) as caught:
        read_embeddings(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and reason in message and "\n" not in message


def test_check_writable_refuses_every_output_it_cannot_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import os

    from hapnet.embeddings.formats import check_writable

    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "taken.npy").write_bytes(b"x")
    (tmp_path / "folder.csv").mkdir()
    (tmp_path / "x.metadata.tsv").mkdir()  # the companion file's name is taken by a folder
    cases = [
        (tmp_path / "notes.txt" / "e.parquet", False, f"{tmp_path / 'notes.txt'} is a file, not a folder"),
        (
            tmp_path / "notes.txt" / "deeper" / "e.csv",
            True,
            f"{tmp_path / 'notes.txt'} is a file, not a folder",
        ),
        (tmp_path / "taken.npy", False, "taken.npy: already exists (use --force to overwrite)"),
        (tmp_path / "folder.csv", True, "folder.csv: is a folder, expected a file name"),  # even with --force
        (tmp_path / "x.tsv", True, "x.metadata.tsv: is a folder, expected a file name"),
    ]
    for path, force, message in cases:
        with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            check_writable(path, force)
    check_writable(tmp_path / "taken.npy", force=True)
    check_writable(tmp_path / "new" / "deeper" / "e.parquet")  # missing folders are created later
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode, **kw: Path(path) != locked and real_access(path, mode)
    )
    with pytest.raises(InputError, match=r"e.csv: cannot write in .*locked \(permission denied\)"):
        check_writable(locked / "sub" / "e.csv")


def test_cli_embed_refuses_an_unwritable_output_before_training(
    tmp_path: Path, tree_csv: Path, monkeypatch: pytest.MonkeyPatch
):
    import hapnet.embeddings.structure

    def never(*args, **kwargs):
        raise AssertionError("trained although the output cannot be written")

    monkeypatch.setattr(hapnet.embeddings.structure, "embed", never)
    (tmp_path / "notes.txt").write_text("x")
    result = run_cli("embed", tree_csv, "-o", tmp_path / "notes.txt" / "e.parquet", *FAST)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip() == (
        f"error: {tmp_path / 'notes.txt' / 'e.parquet'}: {tmp_path / 'notes.txt'} is a file, not a folder"
    )
