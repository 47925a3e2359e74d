"""Build a tiny random-weight sequence classifier that stands in for MERA's answer judge, offline.

`MERA-evaluation/MERA_Answer_judge` is a 2-label sequence-classification model whose tokenizer
has a `sep_token` (MERA joins question, gold and prediction with it). The stand-in keeps exactly
that shape: a BERT encoder with a classification head (2 labels) and a WordPiece tokenizer with
[CLS]/[SEP], covering ASCII and Cyrillic so Russian text tokenizes without [UNK] floods. vLLM
serves it with `--runner pooling --convert classify`, so the judge client is tested against the
real `/classify` route. Labels are random: tests assert the protocol, never the verdict.
"""

from __future__ import annotations

from pathlib import Path

from server.dev_model import cached_build

# Bump when the builder changes so cached checkpoints are rebuilt.
BUILDER_VERSION = 2
STAMP_FILE = "mera_dev_judge.json"
# head_dim 32 (64 hidden / 2 heads): vLLM CPU attention has no kernel for head_dim 16.
# The real judge truncates at 8192 tokens; the stand-in accepts as much so truncation paths run.
MAX_POSITIONS = 8192
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _vocab() -> list[str]:
    """Every printable ASCII and Cyrillic character, as word starts and as `##` continuations."""
    chars = [chr(c) for c in range(33, 127)]
    chars += [chr(c) for c in range(0x0410, 0x0450)] + ["Ё", "ё", "«", "»", "—", "…", "№"]
    tokens = list(SPECIAL_TOKENS) + chars + [f"##{c}" for c in chars]
    seen: dict[str, None] = {}
    for tok in tokens:
        seen.setdefault(tok, None)
    return list(seen)


def build_tiny_judge(out_dir: Path, *, force: bool = False) -> Path:
    """Write the checkpoint to `out_dir` (under 2 MB, a few seconds) unless it is already there."""
    return cached_build(out_dir, _build, stamp_file=STAMP_FILE, version=BUILDER_VERSION, force=force)


def _build(out_dir: Path) -> None:
    # Heavy imports only when actually building.
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    vocab = _vocab()
    tokenizer = BertTokenizerFast(vocab={tok: i for i, tok in enumerate(vocab)}, do_lower_case=False,
                                  strip_accents=False, model_max_length=MAX_POSITIONS)
    tokenizer.save_pretrained(out_dir)

    config = BertConfig(
        vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, max_position_embeddings=MAX_POSITIONS, num_labels=2,
        id2label={0: "incorrect", 1: "correct"}, label2id={"incorrect": 0, "correct": 1},
        pad_token_id=0, torch_dtype="float32",
    )  # fmt: skip
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(out_dir, safe_serialization=True)


if __name__ == "__main__":  # python -m server.dev_judge OUT_DIR
    import sys

    print(build_tiny_judge(Path(sys.argv[1]), force=True))
