"""Every paper architecture end to end, offline: BERT, RoBERTa, XLNet and ELECTRA.

Each family gets a tiny random model (hidden 32, 2 layers) and a tokenizer of its own kind whose
vocabulary is trained here from real RTE sentences with the `tokenizers` library (cased
WordPiece, byte-level BPE, Unigram). Both are saved to a folder and loaded by the hub model's own
config (`model=<hub name>`) with only `model.path` pointing at that folder: the same loading code
as a download from the hub. Through the train entrypoint, every variant runs on every family."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from childtune.method.scopes import encoder_layer_names
from childtune.run import data, models
from childtune.run.tasks import get_task

from conftest import SHARED_DATA, compose, needs_data

pytestmark = needs_data

HIDDEN, LAYERS, HEADS, INNER, VOCAB, MAX_LEN = 32, 2, 2, 64, 600, 32

# One encoder block's parameters (suffixes after `<prefix>.<i>.`), per family.
BERT_BLOCK = [f"{part}.{w}" for part in (
    "attention.self.query", "attention.self.key", "attention.self.value",
    "attention.output.dense", "attention.output.LayerNorm", "intermediate.dense",
    "output.dense", "output.LayerNorm") for w in ("weight", "bias")]
XLNET_BLOCK = ["rel_attn.q", "rel_attn.k", "rel_attn.v", "rel_attn.o", "rel_attn.r",
               "rel_attn.r_r_bias", "rel_attn.r_s_bias", "rel_attn.r_w_bias", "rel_attn.seg_embed",
               "rel_attn.layer_norm.weight", "rel_attn.layer_norm.bias",
               "ff.layer_norm.weight", "ff.layer_norm.bias", "ff.layer_1.weight",
               "ff.layer_1.bias", "ff.layer_2.weight", "ff.layer_2.bias"]


@dataclass(frozen=True)
class Family:
    hub: str               # conf/model/<hub>.yaml
    path: str              # its model.path on the hub
    lr: float
    model_class: str       # what AutoModelForSequenceClassification resolves to
    tokenizer_class: str
    padding_side: str
    block_prefix: str      # the encoder blocks: <block_prefix>.<i>.<suffix>
    block: tuple[str, ...]
    outside: tuple[str, ...]  # trained freely by CT_D: head, pooler / summary, embeddings

    def in_scope(self) -> list[str]:
        """CT_D's official scope, written out: every parameter of every encoder block."""
        return [f"{self.block_prefix}.{i}.{s}" for i in range(LAYERS) for s in self.block]


FAMILIES = {
    "bert": Family("bert-large-cased", "bert-large-cased", 2e-5, "BertForSequenceClassification",
                   "BertTokenizer", "right", "bert.encoder.layer", tuple(BERT_BLOCK),
                   ("bert.embeddings.LayerNorm.weight", "bert.pooler.dense.weight",
                    "classifier.weight")),
    "roberta": Family("roberta-large", "roberta-large", 1e-5, "RobertaForSequenceClassification",
                      "RobertaTokenizer", "right", "roberta.encoder.layer", tuple(BERT_BLOCK),
                      ("roberta.embeddings.word_embeddings.weight", "classifier.dense.weight",
                       "classifier.out_proj.weight")),
    "xlnet": Family("xlnet-large-cased", "xlnet-large-cased", 2e-5,
                    "XLNetForSequenceClassification", "XLNetTokenizer", "left",
                    "transformer.layer", tuple(XLNET_BLOCK),
                    ("transformer.word_embedding.weight", "transformer.mask_emb",
                     "sequence_summary.summary.weight", "logits_proj.weight")),
    "electra": Family("electra-large-discriminator", "google/electra-large-discriminator", 1e-5,
                      "ElectraForSequenceClassification", "BertTokenizer", "right",  # an alias
                      "electra.encoder.layer", tuple(BERT_BLOCK),
                      ("electra.embeddings.LayerNorm.weight", "electra.embeddings_project.weight",
                       "classifier.dense.weight", "classifier.out_proj.weight")),
}


# ---------------------------------------------------------------- tokenizers and tiny models

def rte_rows(n: int, split: str = "train") -> list[list[str]]:
    with open(SHARED_DATA / "glue" / "RTE" / f"{split}.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return rows[:n + 1]  # the header and n examples


def train_vocab(family: str, sentences: list[str]):
    """The family's kind of vocabulary, trained on `sentences`: what its tokenizer class takes."""
    from tokenizers import Tokenizer, models as tm, normalizers, pre_tokenizers, trainers

    if family in ("bert", "electra"):   # WordPiece: BERT's cased, ELECTRA's uncased
        tok = Tokenizer(tm.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=family == "electra")
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.train_from_iterator(sentences, trainers.WordPieceTrainer(
            vocab_size=VOCAB, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
        return {"vocab": tok.get_vocab()}
    if family == "roberta":              # byte-level BPE
        tok = Tokenizer(tm.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.train_from_iterator(sentences, trainers.BpeTrainer(
            vocab_size=VOCAB, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        saved = json.loads(tok.to_str())["model"]
        return {"vocab": saved["vocab"], "merges": [tuple(m) for m in saved["merges"]]}
    tok = Tokenizer(tm.Unigram())          # xlnet: SentencePiece Unigram
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(sentences, trainers.UnigramTrainer(
        vocab_size=VOCAB, unk_token="<unk>",
        special_tokens=["<unk>", "<s>", "</s>", "<cls>", "<sep>", "<pad>", "<mask>"]))
    return {"vocab": [tuple(piece) for piece in json.loads(tok.to_str())["model"]["vocab"]]}


def tiny_backbone(family: str, tokenizer):
    """A random backbone without a head, as the hub checkpoints are (the head is new at load)."""
    import transformers as T

    sizes = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                 intermediate_size=INNER, vocab_size=len(tokenizer),
                 pad_token_id=tokenizer.pad_token_id)
    if family == "bert":
        return T.BertModel(T.BertConfig(max_position_embeddings=64, **sizes))
    if family == "roberta":
        return T.RobertaModel(T.RobertaConfig(max_position_embeddings=64 + 2, type_vocab_size=1,
                                              bos_token_id=0, eos_token_id=2, **sizes))
    if family == "electra":  # embedding size != hidden size: embeddings_project exists
        return T.ElectraModel(T.ElectraConfig(embedding_size=16, max_position_embeddings=64,
                                              **sizes))
    return T.XLNetModel(T.XLNetConfig(vocab_size=len(tokenizer), d_model=HIDDEN, n_layer=LAYERS,
                                      n_head=HEADS, d_inner=INNER,
                                      pad_token_id=tokenizer.pad_token_id))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """family -> a folder with its tokenizer and tiny backbone, as from_pretrained reads it."""
    import transformers as T

    sentences = [s for row in rte_rows(150)[1:] for s in row[1:3]]   # 300 real sentences
    classes = {"bert": T.BertTokenizer, "electra": T.ElectraTokenizer,
               "roberta": T.RobertaTokenizer, "xlnet": T.XLNetTokenizer}
    folders = {}
    for family, cls in classes.items():
        folder = tmp_path_factory.mktemp(family)
        extra = {"do_lower_case": family == "electra"} if family in ("bert", "electra") else {}
        tokenizer = cls(**train_vocab(family, sentences), **extra)
        torch.manual_seed(0)
        tiny_backbone(family, tokenizer).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[family] = folder
    return folders


@pytest.fixture(scope="module")
def rte_dir(tmp_path_factory) -> Path:
    """A GLUE-layout folder with the first real RTE rows: 16 train, 8 dev."""
    root = tmp_path_factory.mktemp("data")
    folder = root / "glue" / "RTE"
    folder.mkdir(parents=True)
    for split, n in (("train", 16), ("dev", 8)):
        (folder / f"{split}.tsv").write_text(
            "".join("\t".join(row) + "\n" for row in rte_rows(n, split)), encoding="utf-8")
    return root


def hub_config(family: str, folder: Path):
    """The hub model's config with its files taken from `folder`."""
    return compose(f"model={FAMILIES[family].hub}", f"model.path={folder}").model


# ---------------------------------------------------------------- the hub configs and scopes

@pytest.mark.parametrize("family", FAMILIES)
def test_hub_config_resolves_class_tokenizer_lr_and_scope(family, checkpoints):
    spec = FAMILIES[family]
    cfg = compose(f"model={spec.hub}")
    assert (cfg.model.source, cfg.model.path, cfg.model.lr) == ("hub", spec.path, spec.lr)
    assert cfg.trainer.lr == spec.lr
    model_cfg = hub_config(family, checkpoints[family])
    model = models.load_model(model_cfg, num_labels=2)
    tokenizer = models.load_tokenizer(model_cfg)
    assert type(model).__name__ == spec.model_class
    assert type(tokenizer).__name__ == spec.tokenizer_class
    assert tokenizer.padding_side == spec.padding_side
    # The official scope, `'layer' in name`, is exactly the encoder blocks in every family: it
    # is case-sensitive (the embeddings' `LayerNorm` is out), XLNet's `layer_norm` lives only
    # inside its blocks, ELECTRA's `embeddings_project` and RoBERTa's `classifier.dense` /
    # `out_proj` hold no `layer`.
    assert encoder_layer_names(model) == spec.in_scope()
    names = {n for n, _ in model.named_parameters()}
    assert set(spec.outside) <= names - set(spec.in_scope())


def test_xlnet_gets_segment_ids_as_in_2021(checkpoints):
    """transformers 5's XLNet tokenizer no longer returns token_type_ids (4.x did, and the
    official code ran 4.7): the loader restores them, <cls> in segment 2, padding in 3."""
    tokenizer = models.load_tokenizer(hub_config("xlnet", checkpoints["xlnet"]))
    split = data.Split([("A short one.", "Yes."), ("A longer first text here.", "And more.")],
                       [0, 1])
    batch = data.Encoded(split, tokenizer, MAX_LEN, False).collate([0, 1])
    types, mask = batch["token_type_ids"], batch["attention_mask"]
    assert mask[0, 0] == 0 and mask[0, -1] == 1             # padded on the left
    assert types[0, 0] == 3 and types[0, -1] == 2 and types[1, -1] == 2
    assert set(types[1, :-1].tolist()) == {0, 1}


@pytest.mark.parametrize("family", FAMILIES)
def test_ct_d_freezes_only_inside_the_blocks(family, checkpoints, rte_dir):
    """With CT_D's mask (frozen exactly), the non-child entries of the blocks never move; the
    head, the pooler / summary and the embeddings train freely."""
    from omegaconf import OmegaConf

    from childtune.method import variants
    from childtune.run import loop, optim

    spec = FAMILIES[family]
    cfg = compose(f"model={spec.hub}", f"model.path={checkpoints[family]}", "task=rte",
                  "variant=child_tuning_d", "variant.decay_frozen=false", "trainer.lr=1e-2")
    torch.manual_seed(0)
    model = models.load_model(cfg.model, num_labels=2)
    split = data.load_splits(get_task("rte"), rte_dir, None, 0)["train"]
    encoded = data.Encoded(split, models.load_tokenizer(cfg.model), MAX_LEN, False)
    child = variants.build(OmegaConf.to_container(cfg, resolve=True)["variant"], model,
                           fisher_loader=lambda seed: data.make_loader(encoded, 4, seed),
                           max_grad_norm=1.0, seed=1, cache_dir=None, cache_parts={})
    assert sorted(child.masks) == sorted(spec.in_scope())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = optim.build_optimizer(model, cfg.trainer)
    child.masker.attach(optimizer)
    loop.train(model, data.make_loader(encoded, 4, 1), optimizer,
               optim.linear_schedule(optimizer, 4, 0), 1, 1.0, progress=False)
    after = dict(model.named_parameters())
    for name, mask in child.masks.items():
        assert torch.equal(after[name][~mask], before[name][~mask]), name
    moved = {n for n in after if not torch.equal(after[n], before[n])}
    assert set(spec.outside) - {"transformer.mask_emb"} <= moved   # XLNet's is unused here
    for name in spec.outside:
        if "classifier" in name or "logits_proj" in name or "summary" in name or "pooler" in name:
            assert bool((after[name] != before[name]).all()), name   # every entry moved


# ---------------------------------------------------------------- padding

@pytest.mark.parametrize("family", FAMILIES)
def test_mixed_lengths_give_each_example_its_own_logits(family, checkpoints):
    model_cfg = hub_config(family, checkpoints[family])
    torch.manual_seed(0)
    model = models.load_model(model_cfg, num_labels=2)
    assert not model.training   # eval mode, as from_pretrained returns it: no dropout
    tokenizer = models.load_tokenizer(model_cfg)
    texts = [(r[1], r[2]) for r in rte_rows(3)[1:]] + [("Short.", "Tiny."), ("A b c d.", "E.")]
    split = data.Split(texts, [0] * len(texts))
    encoded = data.Encoded(split, tokenizer, MAX_LEN, False)
    lengths = [len(f["input_ids"]) for f in encoded.features]
    assert min(lengths) < MAX_LEN // 2 and max(lengths) == MAX_LEN

    def logits(indices):
        inputs = {k: v for k, v in encoded.collate(indices).items() if k not in ("idx", "labels")}
        with torch.no_grad():
            return model(**inputs).logits

    together = logits(list(range(len(split))))
    alone = torch.cat([logits([i]) for i in range(len(split))])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- every variant, end to end

VARIANTS = ["vanilla", "child_tuning_f", "child_tuning_d", "random_mask", "lowest_fisher",
            "prune", "child_tuning_d_top_k", "top_k"]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_variant_runs_and_p1_equals_vanilla(family, checkpoints, rte_dir, tmp_path):
    from childtune.run.train import run

    spec = FAMILIES[family]

    def train(*overrides: str) -> dict:
        cfg = compose(f"model={spec.hub}", f"model.path={checkpoints[family]}", "task=rte",
                      f"data.dir={rte_dir}", f"data.max_seq_length={MAX_LEN}",
                      "trainer.epochs=1", "trainer.batch_size=4", "trainer.eval_batch_size=8",
                      "trainer.lr=1e-3", f"results_dir={tmp_path / 'results'}",
                      f"runtime.cache_dir={tmp_path / 'cache'}", "runtime.progress=false",
                      *overrides)
        return json.loads(Path(run(cfg)).read_text())

    numel = {n: p.numel() for n, p in models.load_model(
        hub_config(family, checkpoints[family]), 2).named_parameters()}
    records = {v: train(f"variant={v}", *(["variant.k=1"] if "top_k" in v else []))
               for v in VARIANTS}
    for variant, record in records.items():
        assert record["status"] == "success" and record["identity"]["model"] == spec.hub
        assert record["train"]["steps"] == 4 and set(record["metrics"]) == {"dev"}
        if variant in ("child_tuning_d", "random_mask", "lowest_fisher", "prune"):
            stats = record["mask"]["statistics"]   # the scope: exactly the encoder blocks
            assert stats["masked_entries"] == sum(numel[n] for n in spec.in_scope())
            assert stats["kept"] == round(0.3 * stats["masked_entries"])
            assert set(stats["per_layer"]) == {str(i) for i in range(LAYERS)}
    losses = {v: r["train"]["last_loss"] for v, r in records.items()}
    assert len(set(losses.values()) - {losses["child_tuning_d"]}) >= 4   # the masks act

    vanilla = records["vanilla"]
    for variant in ("child_tuning_d", "child_tuning_f"):
        full = train(f"variant={variant}", "variant.p=1.0")
        assert full["train"]["last_loss"] == vanilla["train"]["last_loss"], variant
        assert full["metrics"] == vanilla["metrics"], variant
