"""The prior fine-tuning methods (regularizers, the top_k variant and CT_D within the top k
layers) on the tiny model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from childtune import mask_cache
from childtune.errors import UserError
from childtune.method import regularizers, scopes, selection, variants
from childtune.method.batches import default_loss
from childtune.method.fisher import fisher_information
from childtune.records import config_hash
from childtune.run import loop, optim

CONF = Path(__file__).resolve().parents[1] / "src" / "childtune" / "conf"
DEFAULTS = {name: OmegaConf.to_container(OmegaConf.load(CONF / "regularizer" / f"{name}.yaml"))
            for name in regularizers.REGULARIZERS}


def tiny_model(num_labels: int = 2, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=num_labels,
                        problem_type="regression" if num_labels == 1 else None)
    return BertForSequenceClassification(config)


def batches(n: int = 4, size: int = 8, length: int = 12, regression: bool = False, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        labels = (torch.rand(size, generator=g) * 5 if regression
                  else torch.randint(0, 2, (size,), generator=g))
        mask = torch.ones(size, length, dtype=torch.long)
        mask[: size // 2, length // 2:] = 0  # some padding
        out.append({"input_ids": torch.randint(1, 100, (size, length), generator=g),
                    "token_type_ids": torch.zeros(size, length, dtype=torch.long),
                    "attention_mask": mask, "labels": labels,
                    "idx": torch.arange(i * size, (i + 1) * size)})
    return out


def regularizer(name: str, model, seed: int = 1, **overrides):
    return regularizers.build({**DEFAULTS[name], **overrides}, model, seed=seed)


def train(model, reg, data, *, lr=1e-3, weight_decay=0.01, masker=None, seed=7):
    """A few steps of the real loop; the global seed fixes dropout."""
    trainer = OmegaConf.create({"optimizer": "adamw_torch", "lr": lr, "weight_decay": weight_decay,
                                "adam_betas": [0.9, 0.999], "adam_eps": 1e-8})
    optimizer = optim.build_optimizer(model, trainer)
    scheduler = optim.linear_schedule(optimizer, len(data), 0)
    reg.attach(optimizer)
    if masker is not None:
        masker.attach(optimizer)
    torch.manual_seed(seed)
    return loop.train(model, data, optimizer, scheduler, 1, 1.0, progress=False,
                      loss_fn=reg.loss)


def state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [n for n in a if not torch.equal(a[n], b[n])]
    assert not different, f"differ: {different[:3]}"


def vanilla_run(data, num_labels=2):
    model = tiny_model(num_labels)
    trained = train(model, regularizer("none", model), data)
    return model, trained


# ---------------------------------------------------------------- none

def test_none_is_neutral_in_the_config_hash():
    config = {"model": {"name": "tiny"}, "variant": {"name": "vanilla", "p": None}}
    assert config_hash({**config, "regularizer": {"name": "none"}}) == config_hash(config)
    assert config_hash({**config, "regularizer": {"name": "r3f", "lam": 1.0}}) != config_hash(config)


# ---------------------------------------------------------------- pretrained_decay

def test_pretrained_decay_adds_lam_times_distance_to_the_gradient():
    model = tiny_model()
    model.eval()  # no dropout: the two losses see the same function
    reg = regularizer("pretrained_decay", model, lam=0.3)
    start = state(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    batch = batches(1)[0]

    def grads(loss_fn):
        model.zero_grad()
        loss_fn(model, batch).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    task, total = grads(default_loss), grads(reg.loss)
    pretrained = regularizers.pretrained_parameters(model)
    assert "classifier.weight" not in pretrained and "bert.pooler.dense.weight" in pretrained
    for name, param in model.named_parameters():
        expected = 0.3 * (param.detach() - start[name]) if name in pretrained else 0.0
        torch.testing.assert_close(total[name] - task[name],
                                   torch.zeros_like(param) + expected, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- mixout

def test_mixout_with_p0_and_dropout_kept_is_vanilla_bit_for_bit():
    data = batches()
    reference, vanilla = vanilla_run(data)
    model = tiny_model()
    names = [n for n, _ in model.named_parameters()]
    reg = regularizer("mixout", model, p=0.0, keep_dropout=True)
    assert [n for n, _ in model.named_parameters()] == names  # masks are keyed by these
    trained = train(model, reg, data)
    assert trained["last_loss"] == vanilla["last_loss"]
    assert_identical(state(model), state(reference))


def test_mixout_with_p1_keeps_every_linear_weight_at_its_start():
    model = tiny_model()
    start = state(model)
    reg = regularizer("mixout", model, p=1.0)
    assert reg.info()["mixed_linear_layers"] == 2 * 6 + 2  # 6 per layer, pooler, classifier
    train(model, reg, batches())
    now = state(model)
    linear = {f"{n}.weight" for n, m in model.named_modules()
              if isinstance(m, regularizers.MixoutLinear)}
    assert linear and all(torch.equal(now[n], start[n]) for n in linear)
    moved = [n for n in now if n not in linear and not torch.equal(now[n], start[n])]
    assert "bert.encoder.layer.0.intermediate.dense.bias" in moved  # the rest did train


def test_mixout_mixes_in_training_only():
    model = tiny_model()
    reg = regularizer("mixout", model, p=0.5)
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    train(model, reg, batches())  # weights move away from w0
    plain = tiny_model()
    plain.load_state_dict(model.state_dict())
    batch = {k: v for k, v in batches(1)[0].items() if k not in ("idx", "labels")}
    model.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, plain(**batch).logits)
        model.train()
        assert not torch.equal(model(**batch).logits, plain(**batch).logits)


def test_mixout_expectation_is_the_weight():
    linear = torch.nn.Linear(200, 3)
    mixed = regularizers.MixoutLinear(linear, 0.7, torch.Generator().manual_seed(0))
    with torch.no_grad():
        linear.weight.add_(1.0)  # w = w0 + 1
        draws = torch.stack([mixed.mixed_weight() for _ in range(2000)])
    columns = (draws - mixed.target).ne(0).all(dim=1)  # per input unit: all rows mixed alike
    assert columns.float().mean().item() == pytest.approx(0.3, abs=0.02)
    assert ((draws - mixed.target).ne(0) == columns[:, None, :]).all()
    # expectation w: the deviation w - w0 = 1 on average (200 independent units, 4 sigma)
    assert (draws - mixed.target).mean().item() == pytest.approx(1.0, abs=0.01)


# ---------------------------------------------------------------- recadam

def test_recadam_schedule_hits_its_endpoints():
    reg = regularizer("recadam", tiny_model(), k=0.5, t0=100)
    assert reg.anneal(1) < 1e-20
    assert reg.anneal(100) == 0.5
    assert reg.anneal(10_000) == 1.0
    values = [reg.anneal(t) for t in range(0, 200)]
    assert values == sorted(values)


def one_step(model, reg, weight_decay):
    """Move the weights off w0, give them gradients, take one AdamW step."""
    with torch.no_grad():
        torch.manual_seed(3)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
            p.grad = torch.randn_like(p)
    before = state(model)
    optimizer = torch.optim.AdamW(optim.param_groups(model, weight_decay), lr=1e-3)
    if reg is not None:
        reg.attach(optimizer)
    optimizer.step()
    return before, state(model)


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_recadam_before_t0_only_pulls_towards_the_pretrained_weights(weight_decay):
    plain, model = tiny_model(), tiny_model()
    start = state(model)
    reg = regularizer("recadam", model, t0=1e9, gamma=50.0)
    assert reg.anneal(1) == 0.0
    _, adamw = one_step(plain, None, weight_decay)
    before, after = one_step(model, reg, weight_decay)
    pretrained = regularizers.pretrained_parameters(model)
    for name in after:
        if name not in pretrained:  # the head: the plain AdamW step
            assert torch.equal(after[name], adamw[name])
            continue
        decay = 0.0 if name.endswith("bias") or "LayerNorm" in name else weight_decay
        decayed = before[name] * (1 - 1e-3 * decay)
        expected = decayed - 1e-3 * 50.0 * (decayed - start[name])
        torch.testing.assert_close(after[name], expected, rtol=1e-5, atol=1e-7)


def test_recadam_after_t0_is_adamw_bit_for_bit():
    plain, model = tiny_model(), tiny_model()
    reg = regularizer("recadam", model, t0=-1e9)
    _, adamw = one_step(plain, None, 0.01)
    _, after = one_step(model, reg, 0.01)
    assert_identical(after, adamw)
    assert reg.info()["final_lambda"] == 1.0 and reg.info()["steps"] == 1


# ---------------------------------------------------------------- r3f

@pytest.mark.parametrize("num_labels", [2, 1])
def test_r3f_with_lam0_is_vanilla_bit_for_bit(num_labels):
    data = batches(regression=num_labels == 1)
    reference, vanilla = vanilla_run(data, num_labels)
    model = tiny_model(num_labels)
    reg = regularizer("r3f", model, lam=0.0, eps=0.1)
    trained = train(model, reg, data)
    assert trained["last_loss"] == vanilla["last_loss"]
    assert_identical(state(model), state(reference))
    assert reg.info()["mean_symmetric_divergence"] > 0  # the noised pass did run


@pytest.mark.parametrize("noise", ["uniform", "normal"])
@pytest.mark.parametrize("num_labels", [2, 1])
def test_r3f_with_eps0_adds_zero_loss(noise, num_labels):
    model = tiny_model(num_labels)  # train mode: dropout on in both passes
    reg = regularizer("r3f", model, eps=0.0, noise=noise)
    batch = batches(1, regression=num_labels == 1)[0]
    torch.manual_seed(5)
    total = reg.loss(model, batch)
    torch.manual_seed(5)
    assert total.item() == default_loss(model, batch).item()
    assert reg.info()["mean_symmetric_divergence"] == 0.0
    noisy = regularizer("r3f", model, eps=0.5, noise=noise)
    noisy.loss(model, batch)
    assert noisy.info()["mean_symmetric_divergence"] > 0


def test_r3f_symmetric_kl_matches_its_definition():
    reg = regularizer("r3f", tiny_model())
    clean, noised = torch.randn(4, 3), torch.randn(4, 3)
    p, q = clean.softmax(-1), noised.softmax(-1)
    expected = ((p * (p / q).log()).sum() + (q * (q / p).log()).sum()) / 4
    torch.testing.assert_close(reg.symmetric_divergence(clean, noised), expected)


# ---------------------------------------------------------------- top_k

def test_top_k_freezes_exactly_the_lower_layers_and_embeddings():
    model = tiny_model()
    start = state(model)
    child = variants.build({"mask": "top_layers", "k": 1, "decay_frozen": False}, model,
                           fisher_loader=None, max_grad_norm=1.0, seed=1, cache_dir=None,
                           cache_parts={})
    train(model, regularizer("none", model), batches(), masker=child.masker)
    now = state(model)
    frozen = {n for n in now if torch.equal(now[n], start[n])}
    expected = {n for n in now if n.startswith("bert.embeddings.") or ".layer.0." in n}
    assert frozen == expected
    assert child.info["statistics"]["per_layer"] == {"0": 0.0, "1": 1.0, "none": pytest.approx(
        child.info["statistics"]["per_layer"]["none"])}


def test_top_k_rejects_more_layers_than_the_model_has():
    with pytest.raises(UserError, match="variant.k=3 must be between 1 and the model.s 2"):
        variants.build({"mask": "top_layers", "k": 3}, tiny_model(), fisher_loader=None,
                       max_grad_norm=1.0, seed=1, cache_dir=None, cache_parts={})
    with pytest.raises(UserError, match="variant.k"):
        variants.check_variant({"mask": "top_layers", "k": 0})
    assert scopes.top_layers_mask(tiny_model(), 2)["bert.encoder.layer.0.output.dense.weight"].all()


# ---------------------------------------------------------------- CT_D within the top k layers

CT_D = {"mask": "fisher_top", "p": 0.3, "scope": "layers", "fisher_seed": None,
        "fisher_recipe": "official", "fisher_mode": "train", "decay_frozen": False}


def ct_d_child(model, cache_dir=None, **variant):
    return variants.build({**CT_D, **variant}, model, fisher_loader=lambda _: batches(),
                          max_grad_norm=1.0, seed=1, cache_dir=cache_dir, cache_parts={})


def top_p_of_fisher(model, names):
    """CT_D's mask chosen among `names` alone, from the Fisher pass build() makes (seed 1)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        fisher = fisher_information(model, batches(), scopes.encoder_layer_names(model),
                                    max_grad_norm=1.0)
    return selection.top_p_mask({n: fisher[n] for n in names}, 0.3)


def test_ct_d_with_k_selects_its_mask_within_the_top_layers_only():
    model = tiny_model()
    child = ct_d_child(model, k=1)
    top = scopes.scope_names(model, "layers", 1)
    assert top and all(".layer.1." in n for n in top)
    assert top == [n for n in scopes.encoder_layer_names(model) if ".layer.1." in n]
    frozen = [n for n in child.masks if n.startswith("bert.embeddings.") or ".layer.0." in n]
    whole = [n for n in child.masks if n.startswith(("bert.pooler.", "classifier."))]
    assert frozen and whole and set(child.masks) == set(frozen) | set(whole) | set(top)
    assert not any(child.masks[n].any() for n in frozen)
    assert all(child.masks[n].all() for n in whole)
    n_top = sum(child.masks[n].numel() for n in top)
    assert sum(int(child.masks[n].sum()) for n in top) == selection.kept_count(0.3, n_top)
    expected = top_p_of_fisher(model, top)   # not the top-p of all layers cut to layer 1
    assert all(torch.equal(child.masks[n], expected[n]) for n in top)
    assert child.info["k"] == 1 and child.info["statistics"]["per_layer"]["0"] == 0.0


def test_ct_d_with_k_trains_nothing_outside_its_child_network():
    model = tiny_model()
    start = state(model)
    child = ct_d_child(model, k=1)
    train(model, regularizer("none", model), batches(), masker=child.masker)
    now = state(model)
    for name, mask in child.masks.items():
        assert torch.equal(now[name][~mask], start[name][~mask]), name
    assert not torch.equal(now["classifier.weight"], start["classifier.weight"])


def test_ct_d_without_k_keeps_its_mask_and_cache_key(tmp_path):
    model = tiny_model()
    plain = ct_d_child(model, tmp_path / "a")
    explicit_null = ct_d_child(model, tmp_path / "b", k=None)
    expected = top_p_of_fisher(model, scopes.encoder_layer_names(model))
    for child in (plain, explicit_null):
        assert child.masks.keys() == expected.keys()
        assert all(torch.equal(child.masks[n], expected[n]) for n in expected)
        assert "k" not in child.info
    before_k = {"seed": 1, "max_grad_norm": 1.0, **{key: CT_D[key] for key in (  # no k
        "mask", "p", "scope", "fisher_seed", "fisher_recipe", "fisher_mode")}}
    assert explicit_null.info["cache_key"] == plain.info["cache_key"] \
        == mask_cache.key(before_k)
    assert ct_d_child(model, tmp_path / "c", k=2).info["cache_key"] != plain.info["cache_key"]
    reused = ct_d_child(model, tmp_path / "a")
    assert reused.info["source"] == "reused" and reused.info["cache_key"] == plain.info["cache_key"]


def test_ct_d_with_k_from_the_cache_is_the_computed_mask(tmp_path):
    model = tiny_model()
    computed, reused = (ct_d_child(model, tmp_path, k=1) for _ in range(2))
    assert (computed.info["source"], reused.info["source"]) == ("computed", "reused")
    assert computed.masks.keys() == reused.masks.keys()
    assert all(torch.equal(computed.masks[n], reused.masks[n]) for n in computed.masks)


@pytest.mark.parametrize("variant, message", [
    ({**CT_D, "k": 0}, "variant.k must be a positive number"),
    ({**CT_D, "k": True}, "variant.k must be a positive number"),
    ({**CT_D, "k": 1, "prune": True}, "variant.prune=true"),
    ({"mask": "bernoulli", "p": 0.3, "scope": "all", "k": 1}, "variant.k applies to the fixed"),
    ({"mask": "none", "k": 1}, "variant.k applies to the fixed"),
])
def test_bad_k_fails_before_the_model_is_loaded(variant, message):
    with pytest.raises(UserError, match=message):
        variants.check_variant(variant)


def test_ct_d_with_more_layers_than_the_model_fails_before_the_fisher_pass():
    def no_fisher_pass(_):
        raise AssertionError("the Fisher pass ran")

    with pytest.raises(UserError, match="variant.k=3 must be between 1 and the model.s 2"):
        variants.build({**CT_D, "k": 3}, tiny_model(), fisher_loader=no_fisher_pass,
                       max_grad_norm=1.0, seed=1, cache_dir=None, cache_parts={})


# ---------------------------------------------------------------- configuration

@pytest.mark.parametrize("regularizer_cfg, trainer, message", [
    ({"name": "dropconnect"}, "adamw", "regularizer must be one of"),
    ({**DEFAULTS["mixout"], "p": 1.5}, "adamw", "regularizer.p must be a number in"),
    ({**DEFAULTS["r3f"], "noise": "laplace"}, "adamw", "regularizer.noise"),
    ({**DEFAULTS["pretrained_decay"], "lam": -1}, "adamw", "regularizer.lam"),
    (DEFAULTS["recadam"], "sgd", "needs an AdamW trainer.optimizer"),
])
def test_bad_settings_fail_with_one_clear_error(regularizer_cfg, trainer, message):
    with pytest.raises(UserError, match=message):
        regularizers.check({"regularizer": regularizer_cfg, "trainer": {"optimizer": trainer}})


# ---------------------------------------------------------------- through the entrypoint

@pytest.fixture(scope="module")
def rte_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue")
    folder = root / "glue" / "RTE"
    folder.mkdir(parents=True)
    words = "the cat sat on a mat while dogs ran past every house in town".split()
    for split, n in (("train", 24), ("dev", 12)):
        rows = ["index\tsentence1\tsentence2\tlabel"]
        for i in range(n):
            rows.append(f"{i}\t{' '.join(words[i % 5:i % 5 + 8])}\t{' '.join(words[i % 3:i % 3 + 4])}"
                        f"\t{'entailment' if i % 2 else 'not_entailment'}")
        (folder / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return root


def run_entrypoint(rte_dir, tmp_path, *overrides):
    from hydra import compose, initialize_config_dir

    from childtune.run import train as entry

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[
            "model=tiny", "task=rte", f"data.dir={rte_dir}", f"results_dir={tmp_path}",
            "runtime.cache_dir=null", "runtime.progress=false", "trainer.epochs=1",
            "trainer.batch_size=8", "data.max_seq_length=16", *overrides])
    return json.loads(entry.run(cfg).read_text())


@pytest.fixture(scope="module")
def plain_ctd(rte_dir, tmp_path_factory):
    return run_entrypoint(rte_dir, tmp_path_factory.mktemp("results"), "variant=child_tuning_d")


@pytest.mark.parametrize("name", ["pretrained_decay", "mixout", "recadam", "r3f"])
def test_every_regularizer_composes_with_child_tuning_d(rte_dir, tmp_path, plain_ctd, name):
    plain = plain_ctd
    record = run_entrypoint(rte_dir, tmp_path, "variant=child_tuning_d", f"regularizer={name}")
    assert record["regularizer"]["name"] == name == record["config"]["regularizer"]["name"]
    assert record["identity"]["config_hash"] != plain["identity"]["config_hash"]
    # the Fisher pass ran on the plain model with the plain task loss: the same child network
    assert record["mask"]["statistics"] == plain["mask"]["statistics"]
    assert record["mask"]["fisher_quantiles"] == plain["mask"]["fisher_quantiles"]


def test_top_k_runs_through_the_entrypoint_with_a_regularizer(rte_dir, tmp_path):
    record = run_entrypoint(rte_dir, tmp_path, "variant=top_k", "variant.k=1", "regularizer=mixout")
    assert record["mask"]["kind"] == "top_layers" and record["mask"]["k"] == 1
    assert record["regularizer"]["name"] == "mixout"
    assert record["identity"]["variant"] == "top_k"


def test_top_k_with_ct_d_runs_through_the_entrypoint(rte_dir, tmp_path):
    record = run_entrypoint(rte_dir, tmp_path, "method=top_k_ct_d", "variant.k=1")
    assert record["identity"]["variant"] == "child_tuning_d_top_k"
    assert record["identity"]["regularizer"] == "none"
    assert record["mask"]["kind"] == "fisher_top" and record["mask"]["k"] == 1
    assert record["mask"]["source"] == "computed"
    per_layer = record["mask"]["statistics"]["per_layer"]
    assert per_layer["0"] == 0.0 and per_layer["1"] == pytest.approx(0.3, abs=1e-4)
    assert record["config"]["variant"]["decay_frozen"] is False
