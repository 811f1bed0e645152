"""The record's per-step history, eval loss and parameter counts, and `trainer.eval_every`:
evaluations between training steps change no number and no run identity; records written
before the history existed still read everywhere."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from childtune import records
from childtune.method import masks
from childtune.run import loop, optim
from childtune.run.loop import between_steps

from conftest import compose, random_batches, tiny_model
from test_run_invariance import numbers


def _batches(n: int, seed: int) -> list[dict]:
    return [b | {"idx": torch.arange(i * 4, (i + 1) * 4)}
            for i, b in enumerate(random_batches(n, seed=seed))]


def _dev_loader():
    """A real DataLoader: iterating one draws a seed from torch's global generator."""
    return torch.utils.data.DataLoader(_batches(3, seed=5), batch_size=None)


def _train(eval_every: int | None, guard: bool = True, ct_f: bool = False):
    """Six steps of the real loop on the tiny random model (dropout 0.1), with an evaluation
    every `eval_every` steps; returns the weights, what train returned and the modes seen."""
    model = tiny_model(seed=3)
    optimizer = optim.build_optimizer(model, OmegaConf.create(
        {"optimizer": "adamw_torch", "lr": 1e-3, "weight_decay": 0.01,
         "adam_betas": [0.9, 0.999], "adam_eps": 1e-8}))
    scheduler = optim.linear_schedule(optimizer, 6, 2)
    if ct_f:
        masks.ChildTuningF(model.named_parameters(), 0.3, seed=1, bits=16).attach(optimizer)
    seen = []

    def on_step(values):
        if eval_every and values["step"] % eval_every == 0:
            with between_steps(model) if guard else _eval_then_train(model):
                loop.evaluate(model, {"dev": _dev_loader()}, False, ["accuracy"])
            seen.append(_dropout_on(model))
    torch.manual_seed(11)
    trained = loop.train(model, _batches(6, seed=1), optimizer, scheduler, 1, 1.0,
                         progress=False, on_step=on_step)
    return {n: p.detach().clone() for n, p in model.named_parameters()}, trained, seen


class _eval_then_train:
    """What a careless periodic evaluation does: back to train mode, the streams as they are."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.model.train()


def _dropout_on(model) -> bool:
    """Every module in train mode and two forward passes of one batch differ (dropout)."""
    state = torch.get_rng_state()
    batch = {k: v for k, v in _batches(1, seed=9)[0].items() if k != "idx"}
    with torch.no_grad():
        a, b = model(**batch).logits, model(**batch).logits
    torch.set_rng_state(state)
    return all(m.training for m in model.modules()) and not torch.equal(a, b)


@pytest.mark.parametrize("ct_f", [False, True])
def test_evaluating_between_steps_changes_no_weight(ct_f):
    plain, trained, _ = _train(None, ct_f=ct_f)
    for every in (1, 2, 4):
        weights, again, seen = _train(every, ct_f=ct_f)
        assert seen and all(seen)  # training resumed with dropout active
        assert all(torch.equal(weights[n], plain[n]) for n in plain)  # bit for bit
        assert again["history"] == trained["history"]
        assert again["batch_order_sha256"] == trained["batch_order_sha256"]
    # the check has teeth: an evaluation that leaves torch's stream advanced changes the run
    careless, _, _ = _train(2, guard=False, ct_f=ct_f)
    assert not all(torch.equal(careless[n], plain[n]) for n in plain)


def test_between_steps_restores_each_modules_own_mode():
    model = tiny_model()
    model.train()
    model.bert.embeddings.eval()  # a module deliberately left in eval mode
    with between_steps(model):
        model.eval()
        torch.rand(3)
    assert model.training and not model.bert.embeddings.training
    assert model.bert.encoder.layer[0].training


def test_history_is_per_step_and_compact():
    _, trained, _ = _train(None)
    history = trained["history"]
    assert len(history["loss"]) == len(history["lr"]) == trained["steps"] == 6
    assert history["loss"][-1] == records.compact_number(trained["last_loss"])
    # the rate each step used: warmup from 0 over 2 steps, then linear decay to 0 at step 6
    assert history["lr"] == pytest.approx([0, 5e-4, 1e-3, 7.5e-4, 5e-4, 2.5e-4])
    assert all(v == float(f"{v:.6g}") for v in history["loss"])  # 6 significant digits
    text = records.dumps({"history": {"train": history}})
    assert text.count("\n") == 8  # a line per list, however many steps
    assert '"lr": [0.0, 0.0005, 0.001, 0.00075, 0.0005, 0.00025]' in text


def test_eval_loss_is_the_mean_cross_entropy_of_the_dev_set():
    model = tiny_model(seed=2)
    metrics, losses, _ = loop.evaluate(model, {"dev": _dev_loader()}, False, ["accuracy"])
    model.eval()
    with torch.no_grad():
        expected = torch.stack([model(**{k: v for k, v in b.items() if k != "idx"}).loss
                                for b in _batches(3, seed=5)]).mean()
    assert losses["dev"] == pytest.approx(float(expected), rel=1e-6)
    assert set(metrics["dev"]) == {"accuracy"}  # the loss stays out of the metrics


@pytest.mark.parametrize("overrides", [("variant=vanilla",), ("variant=child_tuning_f",),
                                       ("variant=child_tuning_d", "regularizer=mixout")])
def test_eval_every_changes_no_number_and_no_identity(run_tiny, overrides):
    plain = run_tiny(*overrides)
    curved = run_tiny(*overrides, "trainer.eval_every=2", "force=true")
    assert numbers(curved) == numbers(plain)  # identity (config hash) included
    assert curved["eval_loss"] == plain["eval_loss"]
    assert curved["parameters"] == plain["parameters"]
    assert curved["history"]["train"] == plain["history"]["train"]
    assert "eval" not in plain["history"]
    curve = curved["history"]["eval"]
    assert curve["step"] == [2, 4, 5]  # every 2 steps, then the final evaluation
    assert len(curve["dev"]["accuracy"]) == len(curve["dev"]["loss"]) == 3
    assert curve["dev"]["accuracy"][-1] == records.compact_number(
        plain["metrics"]["dev"]["accuracy"])
    assert curve["dev"]["loss"][-1] == records.compact_number(plain["eval_loss"]["dev"])


def test_the_record_keeps_history_eval_loss_and_parameter_counts(run_tiny):
    vanilla = run_tiny("variant=vanilla")
    steps = vanilla["train"]["steps"]
    assert len(vanilla["history"]["train"]["loss"]) == len(vanilla["history"]["train"]["lr"]) \
        == steps == 5
    assert vanilla["history"]["train"]["loss"][-1] == pytest.approx(vanilla["train"]["last_loss"],
                                                                   rel=1e-5)
    assert 0 < vanilla["eval_loss"]["dev"] < 5
    counts = vanilla["parameters"]
    assert counts["total"] == counts["trainable"] > 1_000_000 and "child" not in counts

    ct_d = run_tiny("variant=child_tuning_d")
    stats, counts = ct_d["mask"]["statistics"], ct_d["parameters"]
    assert counts["masked_scope"] == stats["masked_entries"]
    assert counts["child"] == counts["trainable"] - stats["masked_entries"] + stats["kept"]
    assert counts["child"] < counts["trainable"]
    ct_f = run_tiny("variant=child_tuning_f")
    counts, p = ct_f["parameters"], ct_f["mask"]["p"]
    assert counts["masked_scope"] == counts["trainable"]  # scope: all
    assert counts["child_expected"] == round(p * counts["trainable"])


def test_eval_every_is_validated_and_kept_out_of_the_identity():
    from childtune.errors import UserError
    from childtune.run import validate

    def config(*extra):
        return OmegaConf.to_container(compose("model=tiny", *extra), resolve=True)

    assert records.config_hash(config("trainer.eval_every=50")) == records.config_hash(config())
    assert config()["trainer"]["eval_every"] is None
    with pytest.raises(UserError, match="trainer.eval_every must be a positive integer or null"):
        validate.check_trainer(config("trainer.eval_every=0")["trainer"])


def test_eval_progress_bar_is_drawn_when_progress_is_on(run_tiny, capsys):
    run_tiny("runtime.progress=true")
    assert "eval:" in capsys.readouterr().err


OLD_RECORD = {  # as childtune wrote records before the history: no history, eval_loss, parameters
    # (written as JSON as it is, not by today's builder)
    "status": "success", "schema": 1,
    "identity": {"study": "adhoc", "model": "tiny", "task": "rte", "variant": "vanilla",
                 "p": None, "seed": 1, "n_train": None, "lr": 1e-4, "regularizer": "none",
                 "config_hash": "0123456789"},
    "config": {"study": "adhoc"}, "metrics": {"dev": {"accuracy": 0.5}},
    "headline": {"metric": "accuracy", "split": "dev", "value": 0.5},
    "mask": {"kind": "none"}, "train": {"steps": 5, "last_loss": 0.69},
}


def test_records_without_history_still_read_everywhere(tmp_path, run_tiny, capsys):
    from childtune.study import aggregate, record_plots

    results = tmp_path / "results"
    new = run_tiny("variant=vanilla", "seed=2")
    records.write_json_atomic(records.record_path(results, OLD_RECORD["identity"]), OLD_RECORD)
    recs = records.read_records(results)
    assert len(recs) == 2
    aggregate.run([f"results_dir={results}"])  # tables of the adhoc sweep, and figures
    assert "2 records" in capsys.readouterr().out
    fig = record_plots.training_curves(recs)
    assert fig is not None  # the new record's curves; the old one is left out
    assert record_plots.training_curves([r for r in recs if not r.has("history")]) is None
    assert record_plots.seed_spread(recs) is not None
    assert new["history"]["train"]["loss"]
