"""Tests of the SAMTok mask tokenizer: golden equivalence, checkpoint layout, batching and input handling."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from samtok_rl.mask_tokenizer import (
    CheckpointMismatchError,
    MaskTokenizer,
    build_micro_mask_tokenizer,
    resize_image,
)


def _max_abs(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


# ---------------------------------------------------------------------------------------------------------------
# Golden A: outputs of the original SAMTok code on the micro architecture
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def golden(golden_a):
    inputs = dict(np.load(golden_a / "inputs.npz"))
    expected = dict(np.load(golden_a / "expected.npz"))
    intermediates = dict(np.load(golden_a / "intermediates.npz"))
    resized = np.load(golden_a / "resized.npz")["resized"]
    tok = MaskTokenizer.from_files("sam2_micro.yaml", golden_a / "state_dict.safetensors")
    sam2 = tok.model.sam2_model

    # Read-only hooks on the upstream modules capture each stage, like the hooks that made intermediates.npz.
    seen: dict[str, list] = {}

    def keep(name):
        def hook(module, args, kwargs, output):
            seen.setdefault(name, []).append((kwargs, output))

        return hook

    handles = [
        sam2.image_encoder.register_forward_hook(keep("image_encoder"), with_kwargs=True),
        sam2.sam_mask_decoder.conv_s0.register_forward_hook(keep("conv_s0"), with_kwargs=True),
        sam2.sam_mask_decoder.conv_s1.register_forward_hook(keep("conv_s1"), with_kwargs=True),
        sam2.sam_prompt_encoder.register_forward_hook(keep("prompt_encoder"), with_kwargs=True),
        sam2.sam_mask_decoder.register_forward_hook(keep("mask_decoder"), with_kwargs=True),
        sam2.sam_mask_encoder.register_forward_hook(keep("mask_encoder"), with_kwargs=True),
    ]
    decode_codes = expected["decode_codes"].copy()
    codes = tok.encode(inputs["image"], inputs["masks"])
    mask_embeds = seen["mask_encoder"][0][1][:, 0].numpy()  # (K, 256): the quantizer's input
    logits = tok.decode_logits(inputs["image"], decode_codes).numpy()
    for handle in handles:
        handle.remove()
    masks = tok.decode(inputs["image"], decode_codes)
    return {
        "tok": tok,
        "inputs": inputs,
        "expected": expected,
        "intermediates": intermediates,
        "resized": resized,
        "seen": seen,
        "mask_embeds": mask_embeds,
        "codes": codes,
        "decode_codes_after": decode_codes,
        "logits": logits,
        "masks": masks,
    }


def test_golden_resize_is_exact(golden):
    assert np.array_equal(resize_image(golden["inputs"]["image"]), golden["resized"])


def test_golden_codes_identical(golden):
    assert golden["codes"].dtype == np.int64
    np.testing.assert_array_equal(golden["codes"], golden["expected"]["codes"])
    assert _max_abs(golden["mask_embeds"], golden["expected"]["mask_embeds"]) <= 1e-4


def test_golden_decode_logits_and_masks(golden):
    expected = golden["expected"]
    assert golden["logits"].shape == (6, 1, 256, 256)
    assert _max_abs(golden["logits"], expected["decode_logits"]) <= 1e-4
    assert golden["masks"].dtype == bool and golden["masks"].shape == expected["decode_masks"].shape
    mismatched = int((golden["masks"] != expected["decode_masks"]).sum())
    assert mismatched <= 0.001 * golden["masks"].size, f"{mismatched} mismatched pixels"


def test_golden_missing_code_decodes_as_row_zero_without_mutation(golden):
    # The caller's codes (last row (c0, -1)) are untouched, unlike the original embed_code.
    np.testing.assert_array_equal(golden["decode_codes_after"], golden["expected"]["decode_codes"])
    assert golden["decode_codes_after"][5, 1] == -1
    c0 = int(golden["expected"]["decode_codes"][5, 0])
    pair = golden["tok"].decode_logits(golden["inputs"]["image"], [[c0, -1], [c0, 0]]).numpy()
    assert np.array_equal(pair[0], pair[1])
    assert _max_abs(pair[0], golden["expected"]["decode_logits"][5]) <= 1e-4


def test_golden_stages(golden):
    """Stage-by-stage agreement with intermediates.npz, to localise any mismatch."""
    seen, ref = golden["seen"], golden["intermediates"]
    assert golden["tok"].encoder_passes == 1  # encode and decode shared one image-encoder run

    image_out = seen["image_encoder"][0][1]
    assert _max_abs(image_out["vision_features"][0], ref["image_embed"]) <= 1e-4
    assert _max_abs(seen["conv_s0"][0][1][0], ref["feat_s0"]) <= 1e-4
    assert _max_abs(seen["conv_s1"][0][1][0], ref["feat_s1"]) <= 1e-4

    # First prompt-encoder call: encoding (box points + mask prompt); the later calls: decoding.
    enc_kwargs, (enc_sparse, _) = seen["prompt_encoder"][0]
    coords, labels = enc_kwargs["points"]
    assert _max_abs(coords, ref["enc_point_coords"]) == 0.0
    np.testing.assert_array_equal(labels.numpy(), ref["enc_point_labels"])
    assert _max_abs(enc_kwargs["masks"], ref["enc_mask_prompt"]) <= 1e-6
    assert _max_abs(enc_sparse, ref["enc_sparse"]) <= 1e-5

    dec_kwargs, (multimask, ious, _, object_scores) = seen["mask_decoder"][0]
    assert _max_abs(dec_kwargs["sparse_prompt_embeddings"], ref["dec_sparse"]) <= 1e-6
    assert _max_abs(dec_kwargs["sparse_prompt_embeddings"][:, 2], ref["dec_code_embed"]) <= 1e-6
    assert _max_abs(multimask, ref["dec_multimask_logits"]) <= 1e-4
    assert _max_abs(ious, ref["dec_ious"]) <= 1e-5
    assert _max_abs(object_scores, ref["dec_object_score_logits"]) <= 1e-4


# ---------------------------------------------------------------------------------------------------------------
# Micro tokenizer with random weights (no golden data needed)
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def micro():
    return build_micro_mask_tokenizer(seed=0)


def _image(seed: int, shape=(48, 64, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_micro_builder_is_seeded():
    a = build_micro_mask_tokenizer(seed=3).state_dict()
    b = build_micro_mask_tokenizer(seed=3).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_decode_batch_shares_encoder_and_dedupes(micro):
    image_a, image_b = _image(1), _image(2, (40, 30, 3))
    items = [
        (image_a, [[5, 7], [9, 11]]),
        (image_a.copy(), [[5, 7]]),  # same content, different buffer: same image
        (Image.fromarray(image_a), [[5, -1], [5, 0]]),  # -1 decodes as 0: one pair
        (image_b, [[5, 7]]),
        (image_b, np.zeros((0, 2), np.int64)),
        (_image(9), []),  # no codes: its image is never encoded
    ]
    passes, decoded = micro.encoder_passes, micro.decoder_passes
    results = micro.decode_batch(items)
    assert micro.encoder_passes - passes == 2
    assert micro.decoder_passes - decoded == 4  # a:(5,7),(9,11),(5,0); b:(5,7)
    assert [r.shape for r in results] == [(2, 48, 64), (1, 48, 64), (2, 48, 64), (1, 40, 30), (0, 40, 30), (0, 48, 64)]
    assert all(r.dtype == bool for r in results)

    # Same masks as item-by-item decoding; the features are cached, so no new image-encoder run.
    for (image, codes), result in zip(items[:4], results):
        np.testing.assert_array_equal(micro.decode(image, codes), result)
    assert micro.encoder_passes - passes == 2
    np.testing.assert_array_equal(results[2][0], results[2][1])
    assert results[0].any() and not results[0].all()  # informative random weights: a non-trivial mask


def test_encode_then_decode(micro):
    image = _image(1)
    masks = np.zeros((2, 48, 64), dtype=bool)
    masks[0, 5:20, 10:40] = True
    masks[1, 30:45, 2:12] = True
    codes = micro.encode(image, masks)
    assert codes.shape == (2, 2) and codes.dtype == np.int64
    assert ((codes >= 0) & (codes < 256)).all()
    np.testing.assert_array_equal(micro.encode(image, masks.astype(np.uint8)), codes)
    assert micro.decode(image, codes).shape == (2, 48, 64)


def test_encode_rejects_empty_mask(micro):
    masks = np.zeros((2, 48, 64), dtype=bool)
    masks[0, 1:3, 1:3] = True
    with pytest.raises(ValueError, match="mask 1 is empty"):
        micro.encode(_image(1), masks)
    with pytest.raises(ValueError, match=r"\(K, 48, 64\)"):
        micro.encode(_image(1), masks[:, :40])


@pytest.mark.parametrize("codes, value", [([[256, 0]], "256"), ([[3, -2]], "-2"), ([[0, 1000]], "1000")])
def test_decode_rejects_out_of_range_codes(micro, codes, value):
    with pytest.raises(ValueError, match=f"code {value} at row 0"):
        micro.decode(_image(1), codes)


def test_decode_rejects_bad_code_shape(micro):
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        micro.decode(_image(1), [1, 2, 3])


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint layout
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_checkpoint_round_trip(micro, tmp_path, suffix):
    path = micro.save_pretrained(tmp_path / f"tok{suffix}")
    assert path.suffix == suffix
    reloaded = MaskTokenizer.from_files("sam2_micro.yaml", path)
    original, loaded = micro.state_dict(), reloaded.state_dict()
    assert list(original) == list(loaded)
    assert all(torch.equal(original[k], loaded[k]) for k in original)
    assert any(k.startswith("model.sam2_model.sam_mask_encoder.") for k in loaded)
    assert "quantizer.codebooks.1.cluster_size_ema" in loaded and loaded["quantizer.codebooks.0.weight"].shape == (
        257,
        256,
    )


def test_save_pretrained_folder_and_from_pretrained(micro, tmp_path):
    path = micro.save_pretrained(tmp_path)
    assert path == tmp_path / "mask_tokenizer_256x2.pth"
    state = torch.load(path, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())  # flat tensor dict, no wrapper
    reloaded = MaskTokenizer.from_pretrained(tmp_path, sam2_config="sam2_micro.yaml")
    assert torch.equal(reloaded.quantizer.codebooks[1].weight, micro.quantizer.codebooks[1].weight)


def test_strict_load_names_missing_and_unexpected_keys(micro, tmp_path):
    state = dict(micro.state_dict())
    del state["quantizer.codebooks.1.embed_ema"]
    state["model.sam2_model.extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError) as err:
        MaskTokenizer.from_files("sam2_micro.yaml", path)
    message = str(err.value)
    assert "missing keys (1): quantizer.codebooks.1.embed_ema" in message
    assert "unexpected keys (1): model.sam2_model.extra.weight" in message

    state = dict(micro.state_dict())
    state["quantizer.codebooks.0.weight"] = torch.zeros(1025, 256)
    with pytest.raises(CheckpointMismatchError, match=r"quantizer.codebooks.0.weight \(checkpoint \(1025, 256\)"):
        micro.load_checkpoint_state(state)


def test_drop_memory_modules(tmp_path):
    tok = build_micro_mask_tokenizer(seed=1)
    tok.drop_memory_modules()
    keys = tok.state_dict().keys()
    assert not any(".memory_attention." in k or ".memory_encoder." in k for k in keys)
    with pytest.raises(RuntimeError, match="memory modules were dropped"):
        tok.save_pretrained(tmp_path / "x.pth")


# ---------------------------------------------------------------------------------------------------------------
# Inputs, cache and import hygiene (no model runs)
# ---------------------------------------------------------------------------------------------------------------


def test_image_conversions():
    rgb = _image(4)
    expected = resize_image(rgb, 32)
    assert np.array_equal(resize_image(Image.fromarray(rgb), 32), expected)
    assert np.array_equal(resize_image(np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)]), 32), expected)
    gray = rgb[..., 0]
    assert np.array_equal(resize_image(gray, 32), resize_image(np.dstack([gray] * 3), 32))
    assert np.array_equal(resize_image(Image.fromarray(gray), 32), resize_image(gray[..., None], 32))
    with pytest.raises(ValueError, match="uint8"):
        resize_image(rgb.astype(np.float32))


def test_feature_cache_is_bounded_lru(micro, monkeypatch):
    runs = []

    def fake_encoder(rgb):
        runs.append(int(rgb[0, 0, 0]))
        return object()

    monkeypatch.setattr(micro, "_run_image_encoder", fake_encoder)
    monkeypatch.setattr(micro, "feature_cache_size", 2)
    monkeypatch.setattr(micro, "_cache", type(micro._cache)())
    images = {v: np.full((4, 4, 3), v, np.uint8) for v in (1, 2, 3)}
    for v in (1, 2, 1, 3, 1, 2):
        micro._features(images[v], f"key{v}")
    assert runs == [1, 2, 3, 2]  # 2 was evicted by 3 (1 was used more recently)
    assert len(micro._cache) == 2


def test_import_does_not_import_sam2_or_initialise_hydra():
    code = (
        "import sys, samtok_rl.mask_tokenizer\n"
        "from hydra.core.global_hydra import GlobalHydra\n"
        "assert 'sam2' not in sys.modules\n"
        "assert not GlobalHydra.instance().is_initialized()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
