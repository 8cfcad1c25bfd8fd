"""Tests for samtok_rl.tiny: offline tiny Qwen2.5-VL / Qwen3-VL builds, reload, generation, mask tokens, caching."""

import os


# Everything must build without the Hub; set before transformers/huggingface_hub read their constants.
os.environ["HF_HUB_OFFLINE"] = "1"

import time  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import (  # noqa: E402
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
)
from transformers.trainer_utils import align_special_tokens  # noqa: E402

from samtok_rl.parsing import parse_mask_ids  # noqa: E402
from samtok_rl.tiny import KINDS, QWEN_SPECIAL_TOKENS, build_tiny_vlm, load_tiny_vlm, tiny_vlm_dir  # noqa: E402
from samtok_rl.tokens import MASK_TOKENS, MaskTokenIds, format_mask  # noqa: E402


CLASSES = {
    "qwen2_5_vl": (Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor),
    "qwen3_vl": (Qwen3VLForConditionalGeneration, Qwen3VLProcessor),
}
GRES_PROMPT = "Please segment the man on the left in this image."


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    # A private cache root: the test controls when the first (uncached) build happens.
    return tmp_path_factory.mktemp("tiny_cache")


@pytest.fixture(scope="module", params=KINDS)
def tiny(request, root):
    kind = request.param
    start = time.perf_counter()
    path = build_tiny_vlm(kind, root=root)
    first = time.perf_counter() - start
    model, processor = load_tiny_vlm(kind, root=root)
    return kind, path, first, model, processor


def _image(seed: int, size=(56, 56)) -> Image.Image:
    h, w = size
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _conversation(image=None, text=GRES_PROMPT):
    block = {"type": "image", "image": image} if image is not None else {"type": "image"}
    return [{"role": "user", "content": [block, {"type": "text", "text": text}]}]


def test_unknown_kind_raises(root):
    with pytest.raises(ValueError, match="qwen2_5_vl, qwen3_vl"):
        build_tiny_vlm("llava", root=root)
    with pytest.raises(ValueError, match="known kinds"):
        load_tiny_vlm("qwen2_vl", root=root)


def test_reload_with_auto_classes(tiny):
    kind, path, _, model, processor = tiny
    model_class, processor_class = CLASSES[kind]
    assert isinstance(model, model_class) and isinstance(processor, processor_class)
    assert path == tiny_vlm_dir(kind, path.parent) and kind in path.name and "seed0" in path.name
    # A few-M-parameter model whose embeddings were resized for the mask tokens, as saved on disk.
    n_params = sum(p.numel() for p in model.parameters())
    assert 0.5e6 < n_params < 3e6
    tok = processor.tokenizer
    assert model.get_input_embeddings().weight.shape[0] == len(tok) == 600 + 14 + 514
    assert model.config.text_config.vocab_size == len(tok)
    assert model.config.image_token_id == processor.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert model.config.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert model.config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert model.generation_config.eos_token_id == [tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id]
    assert tok.pad_token == "<|endoftext|>" and tok.eos_token == "<|im_end|>" and tok.bos_token is None


def test_trainer_sees_aligned_special_tokens(tiny):
    kind, _, _, model, processor = tiny
    # The Trainer (hence GRPOTrainer) "aligns" config tokens that differ from the tokenizer's. Qwen3-VL keeps them
    # at the top level, so nothing changes; Qwen2_5_VLConfig drops them (as for the real checkpoints), and the
    # alignment then only re-adds ids it already had: generation still stops on the same tokens.
    before = (model.config.to_dict(), model.generation_config.to_dict())
    eos, pad = set(model.generation_config.eos_token_id), model.generation_config.pad_token_id
    align_special_tokens(model, processor)
    if kind == "qwen3_vl":
        assert (model.config.to_dict(), model.generation_config.to_dict()) == before
    assert set(model.generation_config.eos_token_id) == eos and model.generation_config.pad_token_id == pad


def test_special_token_order(tiny):
    _, _, _, _, processor = tiny
    tok = processor.tokenizer
    # Real Qwen order, directly after the BPE vocabulary; then SAMTok's 514 tokens in vocabulary order.
    assert tok.convert_tokens_to_ids(list(QWEN_SPECIAL_TOKENS)) == list(range(600, 614))
    assert tok.convert_tokens_to_ids(list(MASK_TOKENS)) == list(range(614, 614 + 514))


def test_processor_config(tiny):
    kind, _, _, _, processor = tiny
    image_processor = processor.image_processor
    assert processor.tokenizer.padding_side == "left"
    assert image_processor.merge_size == 2
    if kind == "qwen3_vl":
        assert image_processor.patch_size == 16
        assert list(image_processor.image_mean) == list(image_processor.image_std) == [0.5, 0.5, 0.5]
    else:
        assert image_processor.patch_size == 14


def test_prompt_tokenisation_is_word_level(tiny):
    _, _, _, _, processor = tiny
    tok = processor.tokenizer
    # The BPE was trained on the prompt vocabulary: one token per word here, not one per byte.
    assert tok.tokenize(GRES_PROMPT) == [
        "Please", "Ġsegment", "Ġthe", "Ġman", "Ġon", "Ġthe", "Ġleft", "Ġin", "Ġthis", "Ġimage", ".",
    ]  # fmt: skip
    assert len(tok.encode("No target.", add_special_tokens=False)) <= 3
    # Byte-level: unseen text still round-trips.
    text = "Zoë's café — 東京 🙂"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_generate_on_image_prompt(tiny):
    _, _, _, model, processor = tiny
    inputs = processor.apply_chat_template(
        _conversation(_image(0)), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    # 56x56 px -> a 4x4 patch grid -> 4 merged image tokens.
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 4
    torch.manual_seed(0)
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    prompt_len = inputs["input_ids"].shape[1]
    assert out.shape[0] == 1 and prompt_len < out.shape[1] <= prompt_len + 5
    assert isinstance(processor.decode(out[0, prompt_len:]), str)


def test_processor_pads_left(tiny):
    _, _, _, model, processor = tiny
    texts = [
        processor.apply_chat_template(_conversation(text=t), add_generation_prompt=True, tokenize=False)
        for t in ("Hi.", GRES_PROMPT + " No target.")
    ]
    batch = processor(text=texts, images=[_image(1), _image(2, (64, 48))], padding=True, return_tensors="pt")
    mask = batch["attention_mask"]
    assert mask[:, -1].all() and not mask[0, 0]  # the short row is padded on the left
    assert (batch["input_ids"][0][mask[0] == 0] == processor.tokenizer.pad_token_id).all()
    # mm_token_type_ids must follow the image tokens under left padding (pitfall: right padding misaligns them).
    image_positions = batch["input_ids"] == model.config.image_token_id
    assert torch.equal(batch["mm_token_type_ids"].bool(), image_positions)
    # The padded batch runs through the model.
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(logits).all()


def test_mask_tokens_round_trip(tiny):
    _, _, _, _, processor = tiny
    tok = processor.tokenizer
    span = format_mask(123, 45)
    ids = tok.encode(span, add_special_tokens=False)
    assert ids == tok.convert_tokens_to_ids(["<|mt_start|>", "<|mt_0123|>", "<|mt_0301|>", "<|mt_end|>"])
    assert tok.decode(ids) == span
    assert parse_mask_ids(ids, MaskTokenIds.from_tokenizer(tok)) == [(123, 45)]
    # TRL decodes completions with skip_special_tokens=True: mask tokens (non-special) must survive, while Qwen's
    # <|object_ref_*|> grounding tokens (special) vanish.
    completion = f"<|object_ref_start|> a man <|object_ref_end|> {span} and {format_mask(0, 255)}<|im_end|>"
    ids = tok.encode(completion, add_special_tokens=False)
    kept = tok.decode(ids, skip_special_tokens=True)
    assert kept == f" a man  {span} and {format_mask(0, 255)}"
    assert "<|object_ref_start|>" not in kept and "<|im_end|>" not in kept
    assert tok.decode(ids, skip_special_tokens=False) == completion
    # Mask tokens also survive inside words (normalized=False, no lstrip/rstrip).
    assert tok.decode(tok.encode(f"x{span}y", add_special_tokens=False)) == f"x{span}y"


def test_mask_token_embeddings_initialised(tiny):
    _, _, _, model, processor = tiny
    weight = model.get_input_embeddings().weight.detach()
    base, new = weight[:614], weight[614:]
    # SAMTok's rule: mean of the base rows plus small noise, so the new rows sit near the base mean.
    assert torch.allclose(new.mean(0), base.mean(0), atol=0.01)
    assert not torch.equal(new[0], new[1])


def test_second_build_is_cached(tiny, root):
    kind, path, first, _, _ = tiny
    weights = path / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    start = time.perf_counter()
    again = build_tiny_vlm(kind, root=root)
    cached = time.perf_counter() - start
    assert again == path and weights.stat().st_mtime_ns == mtime
    assert cached < 0.5 and cached < first  # a stat, not a build (generous: the machine is shared)
    # Atomic write: no temporary folders are left behind.
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == []


def test_builds_are_deterministic(tiny, tmp_path):
    kind, path, _, _, _ = tiny
    same = load_file(build_tiny_vlm(kind, root=tmp_path) / "model.safetensors")
    reference = load_file(path / "model.safetensors")
    assert same.keys() == reference.keys()
    assert all(torch.equal(same[k], reference[k]) for k in reference)
    other = load_file(build_tiny_vlm(kind, root=tmp_path, seed=1) / "model.safetensors")
    assert not all(torch.equal(other[k], reference[k]) for k in reference)
    # The BPE training is deterministic too: the same tokenizer file every build.
    assert (tmp_path / path.name / "tokenizer.json").read_text() == (path / "tokenizer.json").read_text()


def test_build_does_not_touch_global_rng(root):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_vlm("qwen2_5_vl", root=root / "rng")
    assert torch.equal(torch.rand(3), expected)
