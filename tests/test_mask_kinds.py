"""The table of mask kinds says what the builder does: every kind is a variant's, fixed kinds
build a fixed mask, cached kinds fill the mask cache, Fisher kinds run a Fisher pass."""
from __future__ import annotations

import pytest

from childtune import mask_kinds
from childtune.errors import UserError
from childtune.method import variants

from conftest import ROOT, compose, random_batches, tiny_model


def test_every_variant_config_names_a_kind_and_every_kind_has_a_variant():
    configs = (ROOT / "src" / "childtune" / "conf" / "variant").glob("*.yaml")
    named = {compose(f"variant={path.stem}").variant.mask for path in configs}
    assert named == set(mask_kinds.NAMES)


@pytest.mark.parametrize("name", mask_kinds.NAMES)
def test_the_builder_does_what_the_table_says(name, tmp_path):
    kind = mask_kinds.KINDS[name]
    variant = {"mask": name, "p": 0.3, "scope": "all" if name == "bernoulli" else "layers",
               "fisher_seed": None, "fisher_recipe": "official", "fisher_mode": "train",
               **({"k": 1} if name == "top_layers" else {})}
    variants.check_variant(variant)
    fisher_passes = []

    def fisher_loader(seed):
        fisher_passes.append(seed)
        return random_batches(2)

    child = variants.build(variant, tiny_model(), fisher_loader=fisher_loader, max_grad_norm=1.0,
                           seed=1, cache_dir=tmp_path, cache_parts={"model": "tiny"})
    assert (child.masks is not None) == kind.fixed
    assert ("cache_key" in child.info) == kind.cached
    assert len(list(tmp_path.rglob("*.npz"))) == kind.cached
    assert bool(fisher_passes) == kind.fisher
    if kind.layer_limited:
        variants.check_variant({**variant, "k": 1})
    else:
        with pytest.raises(UserError, match="variant.k applies to the fixed masks"):
            variants.check_variant({**variant, "k": 1})
    if kind.sized:
        with pytest.raises(UserError, match="variant.p must be a number"):
            variants.check_variant({**variant, "p": 0})
