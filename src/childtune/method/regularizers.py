"""Prior fine-tuning methods that change the loss or the update (not which gradients are masked),
so each composes with every variant (`variant=child_tuning_d regularizer=r3f`).

    none              the task loss
    pretrained_decay  task loss + lam/2 * ||w - w0||^2 over the pretrained weights
    mixout            Lee et al. 2020: in train mode each nn.Linear mixes its weight with w0
    recadam           Chen et al. 2020: Adam step x lambda(t), plus a pull -lr*(1-lambda(t))*gamma*(w-w0)
    r3f               Aghajanyan et al. 2021: task loss + lam * symmetric KL(clean || noised input)

w0 is the weight when the regularizer is built, i.e. the pretrained weight (train.py builds it
right after the CT_D Fisher pass, so that pass sees the plain task loss and the plain model).
"Pretrained weights" are the backbone's (`model.base_model_prefix`): the new classification head
has no pretrained value and is never pulled back.

A regularizer gives the training loss (`loss(model, batch)`, loop.train's `loss_fn`), may hook
the optimizer (`attach`) and says what the record keeps (`info`). Evaluation runs without any
of it: mixout acts in train mode only and R3F's noise only inside the training loss. Random
draws come from the regularizer's own generator, so dropout sees the same random stream as in a
vanilla run. Hyper-parameter defaults and their sources: docs/baselines.md."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..checks import number_in
from .batches import default_loss, model_inputs
from ..errors import UserError

NOISE_TYPES = ("uniform", "normal")


def pretrained_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The trainable parameters that have a pretrained value: the backbone's, not the head's."""
    prefix = f"{model.base_model_prefix}."
    return {n: p for n, p in model.named_parameters() if p.requires_grad and n.startswith(prefix)}


def _generator(seed: int, salt: int) -> torch.Generator:
    """A generator of its own, decorrelated from other consumers of the same run seed."""
    state = np.random.SeedSequence([seed, salt]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def sigmoid(x: float) -> float:
    """1/(1+e^-x) without overflow; exactly 0.0 or 1.0 far from 0."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


class Regularizer:
    """`regularizer=none`: the plain task loss, no hooks."""

    name = "none"

    def __init__(self, model: torch.nn.Module, cfg: dict, seed: int):
        self.hparams = {k: v for k, v in cfg.items() if k != "name"}

    def loss(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        return default_loss(model, batch)

    def attach(self, optimizer: torch.optim.Optimizer) -> list:
        return []

    def info(self) -> dict:
        return {"name": self.name, **self.hparams}


class _Anchored(Regularizer):
    """Keeps a copy w0 of the pretrained weights."""

    def __init__(self, model, cfg, seed):
        super().__init__(model, cfg, seed)
        named = pretrained_parameters(model)
        self.params = list(named.values())
        self.anchors = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def distance(self) -> float:
        """||w - w0|| over the pretrained weights."""
        return math.sqrt(sum(float(((p - a) ** 2).sum()) for p, a in zip(self.params, self.anchors)))

    def info(self) -> dict:
        return {**super().info(), "final_distance_to_pretrained": self.distance()}


class PretrainedDecay(_Anchored):
    """loss = task loss + lam/2 * sum ||w - w0||^2, so the gradient gains lam * (w - w0). It is
    part of the loss: global gradient clipping and Adam's normalisation see it."""

    name = "pretrained_decay"

    def __init__(self, model, cfg, seed):
        super().__init__(model, cfg, seed)
        self.lam = float(cfg["lam"])

    def loss(self, model, batch):
        penalty = sum(((p - a) ** 2).sum() for p, a in zip(self.params, self.anchors))
        return default_loss(model, batch) + 0.5 * self.lam * penalty


class MixoutLinear(torch.nn.Module):
    """nn.Linear whose weight is mixed with its starting value w0 in train mode, per input unit
    as in the official MixLinear: with probability p a column of the weight is replaced by w0's,
    and the mix is rescaled to keep the expectation w: w0 + keep * (w - w0) / (1 - p). p = 1 uses
    w0 itself (the weight gets no gradient). Holds the replaced Linear's own `weight` and `bias`
    Parameters, so parameter names, masks and optimizer groups are unchanged."""

    def __init__(self, linear: torch.nn.Linear, p: float, generator: torch.Generator):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.register_buffer("target", linear.weight.detach().clone(), persistent=False)
        self.p = p
        self.generator = generator

    def mixed_weight(self) -> torch.Tensor:
        if not self.training or self.p == 0:
            return self.weight
        if self.p == 1:
            return self.target
        keep = torch.rand(self.in_features, generator=self.generator) >= self.p
        keep = keep.to(device=self.weight.device, dtype=self.weight.dtype)
        return self.target + keep * (self.weight - self.target) / (1 - self.p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.mixed_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, mixout={self.p}"


class Mixout(Regularizer):
    """Every nn.Linear of the model becomes a MixoutLinear (the classification head's target is
    its initialisation); with `keep_dropout: false` every dropout is set to 0, as in the official
    code, where mixout replaces dropout."""

    name = "mixout"

    def __init__(self, model, cfg, seed):
        super().__init__(model, cfg, seed)
        generator = _generator(seed, salt=1)
        linears = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        for name, linear in linears:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, MixoutLinear(linear, cfg["p"], generator))
        if not cfg["keep_dropout"]:
            for module in model.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = 0.0
        self.hparams["mixed_linear_layers"] = len(linears)


class RecAdam(_Anchored):
    """The official RecAdam update on top of torch's AdamW, for the pretrained weights: the Adam
    step is scaled by lambda(t) = sigmoid(k * (t - t0)) (t = 1 at the first step), AdamW's
    decoupled weight decay is kept as it is, then w <- w - lr * (1 - lambda(t)) * gamma * (w - w0).
    The head gets the plain AdamW step. Parameters without a gradient are skipped, as in RecAdam.

    A step pre-hook remembers the weights, a post-hook rescales what AdamW did. Attach before the
    Child-Tuning masker, so that a masker restoring frozen entries runs after this."""

    name = "recadam"

    def __init__(self, model, cfg, seed):
        super().__init__(model, cfg, seed)
        self.gamma, self.k, self.t0 = float(cfg["gamma"]), float(cfg["k"]), float(cfg["t0"])
        self.step = 0
        self._before: list[torch.Tensor | None] = []
        self._groups: dict[int, dict] = {}

    def anneal(self, step: int) -> float:
        return sigmoid(self.k * (step - self.t0))

    def attach(self, optimizer):
        self._groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        return [optimizer.register_step_pre_hook(lambda *_: self._remember()),
                optimizer.register_step_post_hook(lambda *_: self._rescale())]

    @torch.no_grad()
    def _remember(self) -> None:
        self.step += 1
        self._before = [p.detach().clone() if p.grad is not None else None for p in self.params]

    @torch.no_grad()
    def _rescale(self) -> None:
        lam = self.anneal(self.step)
        for p, before, anchor in zip(self.params, self._before, self.anchors):
            if before is None:
                continue
            group = self._groups[id(p)]
            lr, wd = group["lr"], group["weight_decay"]
            adam_step = p - before * (1 - lr * wd)   # AdamW: p <- p(1 - lr wd) + adam_step
            p.sub_(adam_step, alpha=1 - lam)
            p.sub_(p - anchor, alpha=lr * (1 - lam) * self.gamma)
        self._before = []

    def info(self):
        return {**super().info(), "steps": self.step, "final_lambda": self.anneal(self.step)}


def _random_state(cuda: list[int]) -> tuple:
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in cuda], cuda


def _set_random_state(state: tuple) -> None:
    cpu, cuda_states, cuda = state
    torch.set_rng_state(cpu)
    for device, cuda_state in zip(cuda, cuda_states):
        torch.cuda.set_rng_state(cuda_state, device)


class R3F(Regularizer):
    """loss = task loss + lam * symmetric KL between the outputs on the input embeddings and on
    the input embeddings plus noise (uniform in [-eps, eps] or normal with std eps), as in
    fairseq's sentence_prediction_r3f: batch-mean of KL(p||q) + KL(q||p), noised embeddings
    detached, no term at evaluation. Regression (num_labels 1), where fairseq adds nothing: the
    squared difference of the two outputs (the symmetric KL of unit-variance Gaussians).

    The noised pass reuses the clean pass's dropout masks (the random state is rewound), so the
    term measures the effect of the noise alone, eps = 0 adds exactly 0, and the training random
    stream is the vanilla one. (fairseq draws fresh dropout masks for the second pass.)"""

    name = "r3f"

    def __init__(self, model, cfg, seed):
        super().__init__(model, cfg, seed)
        self.lam, self.eps, self.noise = float(cfg["lam"]), float(cfg["eps"]), cfg["noise"]
        self.generator = _generator(seed, salt=2)
        self.total, self.count = 0.0, 0

    def _sample(self, like: torch.Tensor) -> torch.Tensor:
        if self.noise == "uniform":
            noise = torch.rand(like.shape, generator=self.generator) * 2 - 1
        else:
            noise = torch.randn(like.shape, generator=self.generator)
        return (noise * self.eps).to(like)

    def symmetric_divergence(self, clean: torch.Tensor, noised: torch.Tensor) -> torch.Tensor:
        if clean.shape[-1] == 1:
            return ((clean - noised) ** 2).mean()
        log_p, log_q = F.log_softmax(clean.float(), -1), F.log_softmax(noised.float(), -1)
        return (F.kl_div(log_q, log_p, reduction="sum", log_target=True)
                + F.kl_div(log_p, log_q, reduction="sum", log_target=True)) / clean.shape[0]

    def loss(self, model, batch):
        inputs = model_inputs(model, batch)
        cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
        before = _random_state(cuda)
        out = model(**inputs)
        if not model.training:
            return out.loss
        embeds = model.get_input_embeddings()(inputs["input_ids"]).detach()
        rest = {k: v for k, v in inputs.items() if k not in ("input_ids", "labels")}
        with torch.random.fork_rng(devices=cuda):   # afterwards: the stream as after the clean pass
            _set_random_state(before)               # the clean pass's dropout masks again
            noised = model(inputs_embeds=embeds + self._sample(embeds), **rest).logits
        term = self.symmetric_divergence(out.logits, noised)
        self.total += float(term.detach())
        self.count += 1
        return out.loss + self.lam * term

    def info(self):
        return {**super().info(),
                "mean_symmetric_divergence": self.total / self.count if self.count else None}


REGULARIZERS = {cls.name: cls for cls in (Regularizer, PretrainedDecay, Mixout, RecAdam, R3F)}


def _number(cfg: dict, key: str, low: float = 0.0, high: float = math.inf) -> None:
    number_in(f"regularizer.{key}", cfg.get(key), low, high)


def check(config: dict) -> None:
    """Bad regularizer settings fail here, before any data is read or model loaded."""
    cfg = config.get("regularizer") or {"name": "none"}
    name = cfg.get("name")
    if name not in REGULARIZERS:
        raise UserError(f"regularizer must be one of {', '.join(REGULARIZERS)}, got {name!r}")
    if name in ("pretrained_decay", "r3f"):
        _number(cfg, "lam")
    if name == "mixout":
        _number(cfg, "p", 0.0, 1.0)
    if name == "recadam":
        _number(cfg, "gamma")
        _number(cfg, "k")
        _number(cfg, "t0", -math.inf)
        # Any AdamW: with adamw_hf2021 (decay after the update) `_rescale` anneals the
        # Adam step and leaves the decay of the annealed result, as the official RecAdam.
        if not str(config["trainer"]["optimizer"]).startswith("adamw_"):
            raise UserError("regularizer=recadam rescales Adam steps: it needs an AdamW "
                            "trainer.optimizer (adamw_fused, adamw_torch or adamw_hf2021)")
    if name == "r3f":
        _number(cfg, "eps")
        if cfg.get("noise") not in NOISE_TYPES:
            raise UserError(f"regularizer.noise must be one of {', '.join(NOISE_TYPES)}, got "
                            f"{cfg.get('noise')!r}")


def build(cfg: dict | None, model: torch.nn.Module, seed: int) -> Regularizer:
    cfg = cfg or {"name": "none"}
    return REGULARIZERS[cfg["name"]](model, cfg, seed)
