"""Build a tiny random-weight checkpoint of the real Gemma-4 multimodal architecture, offline.

It has what google/gemma-4-E4B-it has, in miniature: a text decoder with per-layer embeddings
(PLE), sliding/full attention and KV sharing; a vision tower; an audio conformer; a tokenizer with
every Gemma-4 special token; the processor; and the leaderboard chat template. vLLM serves it on
CPU, so the server and the evaluator are tested end to end without a GPU or the Hub.
Outputs are random bytes: tests assert structure, never text.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from chat_templates import template_path

# Bump when the builder changes so cached checkpoints are rebuilt.
BUILDER_VERSION = 1
STAMP_FILE = "mera_dev_model.json"

# The Gemma-4 special tokens by tokenizer attribute name (transformers' convert_gemma4_weights.py).
NAMED_SPECIAL_TOKENS = {
    "image_token": "<|image|>",
    "boi_token": "<|image>",
    "eoi_token": "<image|>",
    "audio_token": "<|audio|>",
    "boa_token": "<|audio>",
    "eoa_token": "<audio|>",
    "sot_token": "<|turn>",
    "eot_token": "<turn|>",
    "soc_token": "<|channel>",
    "eoc_token": "<channel|>",
    "think_token": "<|think|>",
    "escape_token": '<|"|>',
    "str_token": "<|tool_response>",
    "etr_token": "<tool_response|>",
    "stc_token": "<|tool_call>",
    "etc_token": "<tool_call|>",
    "std_token": "<|tool>",
    "etd_token": "<tool|>",
}
VIDEO_TOKEN = "<|video|>"
BASE_SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
# A few merges so that common template text is not all single characters.
HAND_MERGES = [("▁", "t"), ("u", "s"), ("us", "e"), ("m", "o"), ("mo", "d"), ("mod", "e"), ("mode", "l")]


def is_built(out_dir: Path, stamp_file: str = STAMP_FILE, version: int = BUILDER_VERSION) -> bool:
    stamp = Path(out_dir) / stamp_file
    if not stamp.is_file():
        return False
    try:
        return json.loads(stamp.read_text()).get("builder_version") == version
    except ValueError:
        return False


def cached_build(out_dir: Path, build: Callable[[Path], None], *, stamp_file: str, version: int,
                 force: bool = False) -> Path:
    """Run `build(tmp_dir)` and move the result to `out_dir`, unless a build of this version is there.

    Several test sessions may start at once on a fresh clone: one builds (under a file lock, into its
    own temporary folder), the others wait and reuse it."""
    out_dir = Path(out_dir)
    if is_built(out_dir, stamp_file, version) and not force:
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.parent / f".{out_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_built(out_dir, stamp_file, version) and not force:  # built by another process meanwhile
            return out_dir
        tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
        try:
            build(tmp)
            (tmp / stamp_file).write_text(json.dumps({"builder_version": version}) + "\n")
            shutil.rmtree(out_dir, ignore_errors=True)
            tmp.rename(out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    tokens: list[str] = list(BASE_SPECIAL) + list(NAMED_SPECIAL_TOKENS.values()) + [VIDEO_TOKEN]
    tokens += [f"<0x{b:02X}>" for b in range(256)]  # byte fallback: any text is encodable
    tokens += ["▁", "\n", "\t"]
    tokens += [chr(c) for c in range(33, 127)]
    for left, right in HAND_MERGES:
        tokens.append(left + right)
    vocab: dict[str, int] = {}
    for tok in tokens:
        vocab.setdefault(tok, len(vocab))
    return vocab, HAND_MERGES


def build_tiny_gemma4(out_dir: Path, *, template: Path | None = None, force: bool = False) -> Path:
    """Write the checkpoint to `out_dir` (about 4 MB, a few seconds) unless it is already there."""
    template_text = (template or template_path()).read_text(encoding="utf-8")
    return cached_build(out_dir, lambda tmp: _build(tmp, template_text), stamp_file=STAMP_FILE,
                        version=BUILDER_VERSION, force=force)


def _build(tmp: Path, template_text: str) -> None:
    import torch
    from transformers import (
        Gemma4AudioConfig,
        Gemma4AudioFeatureExtractor,
        Gemma4Config,
        Gemma4ForConditionalGeneration,
        Gemma4ImageProcessorPil,
        Gemma4Processor,
        Gemma4TextConfig,
        Gemma4VideoProcessor,
        Gemma4VisionConfig,
        GemmaTokenizer,
        GenerationConfig,
    )


    vocab, merges = _vocab()
    tok = GemmaTokenizer(
        vocab=vocab,
        merges=merges,
        add_bos_token=False,  # the chat template writes <bos> itself
        padding_side="left",
        extra_special_tokens=dict(NAMED_SPECIAL_TOKENS),
        chat_template=template_text,
    )
    tok.add_special_tokens({"additional_special_tokens": [VIDEO_TOKEN]})
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in NAMED_SPECIAL_TOKENS.items()}
    n_vocab = len(tok)

    text = Gemma4TextConfig(
        vocab_size=n_vocab,
        vocab_size_per_layer_input=n_vocab,
        hidden_size=64,
        hidden_size_per_layer_input=8,
        intermediate_size=128,
        num_hidden_layers=4,
        layer_types=["sliding_attention", "full_attention"] * 2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        global_head_dim=32,
        num_kv_shared_layers=2,
        sliding_window=64,
        final_logit_softcapping=30.0,
        max_position_embeddings=32768,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=[tok.eos_token_id, ids["eot_token"]],
    )
    vision = Gemma4VisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        use_clipped_linears=True,
    )
    vision.global_head_dim = 16
    vision.default_output_length = 280  # vLLM reads it; real checkpoints carry it
    # subsampling_conv_channels[0] must stay 128 (the projection assumes 128 mel bins).
    audio = Gemma4AudioConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, subsampling_conv_channels=[128, 4], output_proj_dims=32
    )
    cfg = Gemma4Config(
        text_config=text,
        vision_config=vision,
        audio_config=audio,
        image_token_id=ids["image_token"],
        audio_token_id=ids["audio_token"],
        boi_token_id=ids["boi_token"],
        eoi_token_id=ids["eoi_token"],
        boa_token_id=ids["boa_token"],
        eoa_token_index=ids["eoa_token"],
        video_token_id=tok.convert_tokens_to_ids(VIDEO_TOKEN),
    )
    cfg.eoa_token_id = ids["eoa_token"]
    cfg.vision_soft_tokens_per_image = 280
    cfg.eos_token_id = [tok.eos_token_id, ids["eot_token"]]

    torch.manual_seed(0)
    model = Gemma4ForConditionalGeneration(cfg)
    model.save_pretrained(tmp)
    processor = Gemma4Processor(
        feature_extractor=Gemma4AudioFeatureExtractor(),
        image_processor=Gemma4ImageProcessorPil(
            image_seq_length=280, do_normalize=False, max_soft_tokens=280, pooling_kernel_size=3
        ),
        video_processor=Gemma4VideoProcessor(),
        tokenizer=tok,
        image_seq_length=280,
        chat_template=template_text,
    )
    processor.save_pretrained(tmp)
    GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=[tok.eos_token_id, ids["eot_token"], ids["str_token"]],
        pad_token_id=tok.pad_token_id,
    ).save_pretrained(tmp)


if __name__ == "__main__":  # python -m server.dev_model DIR
    import sys

    print(build_tiny_gemma4(Path(sys.argv[1] if len(sys.argv) > 1 else ".cache/mera-multi/tiny-gemma4"), force=True))
