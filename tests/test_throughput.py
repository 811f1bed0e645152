"""Throughput options that must not change what a run computes beyond their stated meaning:
length-grouped batches (HF's order), length-sorted evaluation, the tokenization cache."""
from __future__ import annotations

import random
import threading

import numpy as np
import pytest
import torch
from conftest import compose, tiny_model

from childtune import records
from childtune.run import data, loop, tokens


def _split(n: int, seed: int = 0) -> data.Split:
    rng = random.Random(seed)
    words = "the cat dog sat on a mat ran fast slow big small house tree".split()
    texts = [(" ".join(rng.choice(words) for _ in range(rng.randint(1, 30))),
              " ".join(rng.choice(words) for _ in range(rng.randint(1, 9)))) for _ in range(n)]
    return data.Split(texts, [i % 2 for i in range(n)])


@pytest.fixture(scope="module")
def tokenizer():
    from omegaconf import OmegaConf

    from childtune.run.models import load_tokenizer

    return load_tokenizer(OmegaConf.create({"source": "embedded", "path": None}))


def _plain_hf_order(lengths, batch_size, permutation):
    """HF's get_length_grouped_indices written out plainly, from a given permutation."""
    mult = len(lengths) // (batch_size * 4)
    if mult > 50:
        mult = 50
    if mult == 0:
        mult = 1
    size = mult * batch_size
    megas = []
    for start in range(0, len(permutation), size):
        mega = list(permutation[start:start + size])
        # stable sort by decreasing length: among equal lengths, the permutation's order
        mega = sorted(mega, key=lambda i: -lengths[i])
        megas.append(mega)
    best = 0
    for m in range(len(megas)):
        if lengths[megas[m][0]] > lengths[megas[best][0]]:
            best = m
    megas[0][0], megas[best][0] = megas[best][0], megas[0][0]
    out = []
    for mega in megas:
        out.extend(mega)
    return out


@pytest.mark.parametrize("n,batch_size", [(3000, 16), (2490, 16), (37, 4), (5, 16)])
def test_grouped_order_is_hf_order(n, batch_size):
    rng = np.random.default_rng(n)
    lengths = rng.integers(3, 128, n).tolist()   # many ties
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(7)).tolist()
    ours = data.length_grouped_indices(lengths, batch_size, torch.Generator().manual_seed(7))
    assert ours == _plain_hf_order(lengths, batch_size, permutation)
    assert sorted(ours) == list(range(n))
    assert lengths[ours[0]] == max(lengths)
    from transformers.trainer_pt_utils import get_length_grouped_indices

    assert ours == get_length_grouped_indices(lengths, batch_size,
                                              generator=torch.Generator().manual_seed(7))


def test_grouped_loader_every_example_once_per_epoch_same_for_every_variant(tokenizer):
    state = torch.get_rng_state()
    split = _split(300)
    encoded = data.Encoded(split, tokenizer, 128, regression=False)
    orders = []
    for _ in range(2):   # two runs (any variants) with the same seed
        loader = data.make_loader(encoded, 16, shuffle_seed=3, group_by_length=True)
        orders.append([[b["idx"].tolist() for b in loader] for _epoch in range(2)])
    assert orders[0] == orders[1]
    epochs = orders[0]
    for batches in epochs:
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(300))
        assert all(len(b) == 16 for b in batches[:-1])
    assert epochs[0] != epochs[1]
    assert torch.equal(state, torch.get_rng_state())   # dropout's stream is untouched
    # padding is what grouping is for: grouped batches pad much less than random ones
    lengths = encoded.lengths()

    def padded(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)
    random_batches = [b["idx"].tolist() for b in data.make_loader(encoded, 16, 3)]
    assert padded(epochs[0]) < 0.8 * padded(random_batches)
    # the first epoch regroups the permutation random batches of the same seed use
    permutation = [i for b in random_batches for i in b]
    assert [i for b in epochs[0] for i in b] == _plain_hf_order(lengths, 16, permutation)


def test_group_by_length_is_in_the_identity_only_when_on():
    from omegaconf import OmegaConf

    base = OmegaConf.to_container(compose(), resolve=True)
    on = OmegaConf.to_container(compose("data.group_by_length=true"), resolve=True)
    without = OmegaConf.to_container(compose(), resolve=True)
    del without["data"]["group_by_length"]
    assert records.config_hash(base) == records.config_hash(without)
    assert records.config_hash(on) != records.config_hash(base)


@pytest.mark.parametrize("regression", [False, True])
def test_sorted_evaluation_predicts_what_unsorted_evaluation_does(tokenizer, regression):
    from transformers import BertForSequenceClassification

    split = _split(70, seed=1)
    if regression:
        split = data.Split(split.texts, [float(i % 5) for i in range(70)])
    model = tiny_model(num_labels=1 if regression else 2, seed=2)
    model.config.vocab_size = 100
    # the way users load a model: from_pretrained (eval mode)
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        model = BertForSequenceClassification.from_pretrained(d)
    encoded = data.Encoded(split, tokenizer, 60, regression)
    for f in encoded.features:   # the tiny model's vocabulary is 100 word pieces
        f["input_ids"] = [t % 100 for t in f["input_ids"]]
    plain = data.make_loader(encoded, 16, None)
    assert [i for b in data.make_eval_loader(encoded, 64) for i in b["idx"].tolist()] != \
        list(range(70))
    preds, labels = loop.predict(model, plain, regression)
    sorted_preds, sorted_labels = loop.predict(model, data.make_eval_loader(encoded, 64),
                                               regression)
    np.testing.assert_array_equal(sorted_labels, labels)
    if regression:
        # Padded positions add exact zeros to attention, but matmuls over another padded
        # length may sum in another blocking: float32 rounding only.
        np.testing.assert_allclose(sorted_preds, preds, rtol=0, atol=1e-5)
    else:
        np.testing.assert_array_equal(sorted_preds, preds)
    assert labels.tolist() == split.labels


def _rng_states():
    return (torch.get_rng_state().clone(), np.random.get_state()[1].copy(), random.getstate())


def _same_states(a, b):
    return torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_token_cache_hit_equals_miss_and_touches_no_random_state(tokenizer, tmp_path):
    split = _split(50)
    expected = data.tokenize(split, tokenizer, 32)
    before = _rng_states()
    cold = tokens.cached_features(split, tokenizer, 32, tmp_path, "rte-train")
    files = list((tmp_path / tokens.TOKENS_CACHE).glob("*.npz"))
    assert len(files) == 1 and files[0].name.startswith("rte-train-")
    warm = tokens.cached_features(split, tokenizer, 32, tmp_path, "rte-train")
    assert _same_states(before, _rng_states())
    assert cold == expected and warm == expected
    assert all(type(v) is int for f in warm for k in f for v in f[k])
    tensors = [data.Encoded(split, tokenizer, 32, False, feats).collate(list(range(50)))
               for feats in (expected, warm)]
    for key in tensors[0]:
        assert torch.equal(tensors[0][key], tensors[1][key])
        assert tensors[0][key].dtype == tensors[1][key].dtype
    # another max_seq_length, other examples or another tokenizer state: another file
    tokens.cached_features(split, tokenizer, 16, tmp_path, "rte-train")
    tokens.cached_features(split.subset(range(49)), tokenizer, 32, tmp_path, "rte-train")
    assert len(list((tmp_path / tokens.TOKENS_CACHE).glob("*.npz"))) == 3
    assert tokens.tokenizer_fingerprint(tokenizer) != tokens.tokenizer_fingerprint(
        type(tokenizer).from_pretrained(tokenizer.name_or_path, do_lower_case=False))


def test_token_cache_survives_concurrent_writers_and_a_corrupt_file(tokenizer, tmp_path):
    split = _split(200)
    expected = data.tokenize(split, tokenizer, 64)
    results = []
    workers = [threading.Thread(target=lambda: results.append(
        tokens.cached_features(split, tokenizer, 64, tmp_path, "x"))) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert results == [expected, expected]
    files = list((tmp_path / tokens.TOKENS_CACHE).iterdir())
    assert len(files) == 1 and not files[0].name.startswith(".")   # no temp file left
    files[0].write_bytes(b"half a file")
    assert tokens.cached_features(split, tokenizer, 64, tmp_path, "x") == expected
    assert tokens.cached_features(split, tokenizer, 64, tmp_path, "x") == expected


def test_runs_with_cache_and_grouping(run_tiny, tmp_path):
    plain = run_tiny("trainer.batch_size=4")
    cached = run_tiny("trainer.batch_size=4", "force=true")   # the token cache is warm now
    assert list((tmp_path / "cache" / tokens.TOKENS_CACHE).glob("rte-*.npz"))
    assert cached["metrics"] == plain["metrics"]
    assert cached["train"]["batch_order_sha256"] == plain["train"]["batch_order_sha256"]
    grouped = run_tiny("trainer.batch_size=4", "data.group_by_length=true")
    assert grouped["identity"]["config_hash"] != plain["identity"]["config_hash"]
    # tiny_data's examples all have one length: the stable sort keeps the random order, and
    # nothing else (dropout's stream) moves either
    assert grouped["train"]["batch_order_sha256"] == plain["train"]["batch_order_sha256"]
    assert grouped["metrics"] == plain["metrics"]



def test_plan_estimates_full_data_runs_and_grouped_batches():
    from childtune.study import progress

    protocol = {"train_seconds": {"rte": 300}, "overhead_seconds": 30,
                "train_sizes": {"rte": 2500},
                "padding": {"random": {"rte": 2.0}, "grouped": {"rte": 1.0}},
                "fused_adamw_speedup": 1.25}

    def config(**data_keys):
        return {"protocol": protocol, "task": {"name": "rte"},
                "data": {"n_train": None, **data_keys},
                "trainer": {"epochs": 3, "optimizer": "adamw"}, "variant": {"mask": "none"}}
    assert progress.estimate(config()) == 300 * 2.5 + 30                 # was None (time unknown)
    assert progress.estimate(config(n_train=1000)) == 300 + 30
    assert progress.estimate(config(group_by_length=True)) == 300 * 2.5 / 2 + 30
    fused = config()
    fused["trainer"]["optimizer"] = "adamw_fused"
    assert progress.estimate(fused) == 300 * 2.5 / 1.25 + 30
    fisher = config(group_by_length=True)
    fisher["variant"]["mask"] = "fisher_top"
    assert progress.estimate(fisher) == 300 * 2.5 / 2 + 300 * 2.5 / 3 + 30   # Fisher epoch ungrouped


def test_bad_group_by_length_and_draw_bits_are_user_errors():
    from omegaconf import OmegaConf

    from childtune.errors import UserError
    from childtune.method import variants
    from childtune.run import train

    config = OmegaConf.to_container(compose("data.group_by_length=yes"), resolve=True)
    with pytest.raises(UserError, match="group_by_length"):
        train.check_config(config)
    f = OmegaConf.to_container(compose("variant=child_tuning_f"), resolve=True)["variant"]
    assert f["draw_bits"] == 16
    variants.check_variant(f)
    with pytest.raises(UserError, match="draw_bits"):
        variants.check_variant({**f, "draw_bits": 8})
    d = OmegaConf.to_container(compose("variant=child_tuning_d"), resolve=True)["variant"]
    with pytest.raises(UserError, match="draw_bits"):
        variants.check_variant({**d, "draw_bits": 16})
