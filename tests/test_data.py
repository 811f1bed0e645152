"""The data layer: the task table, local GLUE files, subsampling, bad files."""
from __future__ import annotations

import pytest
import torch

from childtune.errors import UserError
from childtune.run.data import Encoded, Split, load_splits, read_local, resolve_data_dir
from childtune.run.models import load_tokenizer
from childtune.run.tasks import TASKS, get_task

from conftest import SHARED_DATA, compose, needs_data

EXPECTED_ROWS = {
    "cola": {"train": 8551, "dev": 1043},
    "rte": {"train": 2490, "dev": 277},
    "mrpc": {"train": 3668, "dev": 408},
    "stsb": {"train": 5749, "dev": 1500},
    "sst2": {"train": 67349, "dev": 872},
    "sick": {"train": 4439, "dev": 495, "test": 4906},
}


@pytest.mark.integration
@needs_data
@pytest.mark.parametrize("task", sorted(EXPECTED_ROWS))
def test_real_files_have_the_expected_rows(task):
    splits = load_splits(get_task(task), SHARED_DATA, None, 0)
    assert {k: len(v) for k, v in splits.items()} == EXPECTED_ROWS[task]


@pytest.mark.integration
@needs_data
def test_real_file_quirks_are_parsed():
    cola = read_local(get_task("cola"), SHARED_DATA, "train")   # no header
    assert cola.texts[0] == ("Our friends won't buy this analysis, let alone the next one we propose.",)
    assert sorted(set(cola.labels)) == [0, 1] and sum(cola.labels) == 6023
    mrpc = read_local(get_task("mrpc"), SHARED_DATA, "train")   # BOM in the header
    assert mrpc.texts[0][0].startswith("Amrozi accused his brother")
    stsb = read_local(get_task("stsb"), SHARED_DATA, "dev")      # regression
    assert all(isinstance(x, float) and 0 <= x <= 5 for x in stsb.labels)
    sick = read_local(get_task("sick"), SHARED_DATA, "train")    # CRLF, split column
    assert not any(t.endswith("\r") for pair in sick.texts for t in pair)
    rte = read_local(get_task("rte"), SHARED_DATA, "train")      # quotes kept (QUOTE_NONE)
    assert sum(rte.labels) == 1241
    assert any('"' in t for pair in rte.texts for t in pair)
    wnli = read_local(get_task("wnli"), SHARED_DATA, "train")    # parquet fallback
    assert len(wnli) == 635


def test_task_table_is_complete():
    assert set(TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte",
                          "wnli", "sick"}
    assert get_task("mnli").eval_splits == ("dev_matched", "dev_mismatched")
    assert get_task("stsb").is_regression and get_task("stsb").num_labels == 1
    for task in TASKS.values():
        assert task.headline in task.metrics


def test_unknown_task_names_the_valid_ones():
    with pytest.raises(UserError, match="unknown task 'qrte'.*cola.*sick"):
        get_task("qrte")


def test_subsample_is_reproducible_and_bounded(tiny_data):
    rte = get_task("rte")
    a = load_splits(rte, tiny_data, 10, subsample_seed=0)["train"]
    b = load_splits(rte, tiny_data, 10, subsample_seed=0)["train"]
    c = load_splits(rte, tiny_data, 10, subsample_seed=1)["train"]
    assert len(a) == 10 and a.texts == b.texts and a.texts != c.texts
    assert len(load_splits(rte, tiny_data, 40, 0)["train"]) == 40
    for bad in (0, -3, 41):
        with pytest.raises(UserError, match=f"data.n_train={bad} must be between 1 and .*40"):
            load_splits(rte, tiny_data, bad, 0)


def test_missing_data_dir_and_missing_task_files(tmp_path, tiny_data):
    with pytest.raises(UserError, match="does not exist.*CHILDTUNE_DATA_DIR"):
        resolve_data_dir(str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match=r"task 'cola' needs .*CoLA/train.tsv.*missing"):
        load_splits(get_task("cola"), tiny_data, None, 0)


def test_env_var_is_the_fallback(monkeypatch, tiny_data):
    monkeypatch.setenv("CHILDTUNE_DATA_DIR", str(tiny_data))
    assert resolve_data_dir(None) == tiny_data
    monkeypatch.delenv("CHILDTUNE_DATA_DIR")
    assert resolve_data_dir(None) is None


@pytest.mark.parametrize("row,problem", [
    ("7\tonly one sentence", "2 tab-separated fields, expected at least 4"),
    ("7\ta\tb\tmaybe", "label 'maybe' not in"),
])
def test_malformed_rows_name_file_and_line(tiny_data, row, problem):
    path = tiny_data / "glue" / "RTE" / "train.tsv"
    lines = path.read_text().splitlines()
    lines.insert(5, row)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=f"malformed row at .*train.tsv:6: {problem}"):
        load_splits(get_task("rte"), tiny_data, None, 0)


def test_hub_unreachable_says_to_set_the_data_dir(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("CHILDTUNE_DATA_DIR", raising=False)
    with pytest.raises(UserError, match="could not load nyu-mll/glue.*set CHILDTUNE_DATA_DIR"):
        load_splits(get_task("rte"), None, None, 0)


PAIRS = [("A man is playing a guitar on the stage.", "Someone plays music."), ("Hi.", "Yes."),
         ("The cat sat on the mat while the dog slept by the door.", "A cat sat.")]


@pytest.mark.parametrize("side", ["right", "left"])
def test_batches_are_padded_as_the_tokenizer_pads(side):
    """On the tokenizer's side with its pad ids (XLNet pads on the left and reads the last
    token): the same tensors as the tokenizer's own `pad`."""
    tokenizer = load_tokenizer(compose("model=tiny").model)
    tokenizer.padding_side = side
    encoded = Encoded(Split(PAIRS, [0, 1, 0]), tokenizer, 128, False)
    batch = encoded.collate([0, 1, 2])
    reference = tokenizer.pad(encoded.features, padding=True, return_tensors="pt")
    assert set(batch) == set(reference) | {"labels", "idx"}
    for key, value in reference.items():
        assert torch.equal(batch[key], value), key
    assert batch["attention_mask"][1, 0 if side == "left" else -1] == 0


def test_right_padded_batches_are_unchanged():
    """MiniLM (right padding): each example followed by pad id 0 in every column, as before
    the padding side was honoured, so its runs keep their numbers."""
    tokenizer = load_tokenizer(compose("model=minilm").model)
    encoded = Encoded(Split(PAIRS, [0, 1, 0]), tokenizer, 128, False)
    batch = encoded.collate([2, 1])
    longest = len(encoded.features[2]["input_ids"])
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        rows = [f[key] + [0] * (longest - len(f[key])) for f in (encoded.features[2],
                                                                 encoded.features[1])]
        assert torch.equal(batch[key], torch.tensor(rows)), key
