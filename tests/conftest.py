"""Shared test setup: offline, CPU only, quiet tokenizers; the golden data and the fixtures several files use."""

import os
from pathlib import Path

import pytest


# Nothing may reach the hub: every model in the tests is built from config on the fly.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# With DeepSpeed installed (`make test-dist`), importing it auto-detects its accelerator and, finding no GPU, prints a
# warning to stdout, where doctests read it as output. The tests run on CPU anyway: name its CPU accelerator.
os.environ.setdefault("DS_ACCELERATOR", "cpu")

# Reference outputs of the original SAMTok mask tokenizer on a micro architecture ("golden A"): $SAMTOK_GOLDEN_DIR
# (the golden root or the A folder itself), else ../shared/golden beside the repository.
GOLDEN_ENV = "SAMTOK_GOLDEN_DIR"


def golden_a_dir() -> Path:
    root = Path(os.environ.get(GOLDEN_ENV) or Path(__file__).resolve().parents[2] / "shared" / "golden")
    return root if (root / "state_dict.safetensors").is_file() else root / "vq_sam2_micro_a"


@pytest.fixture(scope="session")
def golden_a() -> Path:
    """The golden A folder (skips the test with the place it looked when absent)."""
    path = golden_a_dir()
    if not (path / "state_dict.safetensors").is_file():
        pytest.skip(f"golden data not found at {path} (set {GOLDEN_ENV} to the folder holding vq_sam2_micro_a)")
    return path


@pytest.fixture(scope="session")
def golden_mask_tokenizer(golden_a):
    """The micro mask tokenizer with golden A's weights (the original code's), shared so its feature cache is."""
    from samtok_rl.mask_tokenizer import MaskTokenizer

    return MaskTokenizer.from_files(golden_a / "sam2_micro.yaml", golden_a / "state_dict.safetensors", device="cpu")


@pytest.fixture
def no_java(monkeypatch):
    """Take gcg_metrics' documented no-Java path (METEOR None, CIDEr with the simple tokenizer) instead of starting
    the JVMs (~30 s on a loaded 2-core machine), in tests about everything but the caption metrics."""
    from samtok_rl.metrics import gcg as gcg_module

    monkeypatch.setattr(gcg_module, "java_available", lambda: False)


class FixedCodes:
    """Stands in for the mask tokenizer in data preparation: deterministic codes, no SAM2 forward."""

    def encode(self, image, masks):
        import numpy as np

        k = np.arange(len(masks), dtype=np.int64)
        return np.stack([(k * 37 + 11) % 256, (k * 91 + 5) % 256], axis=1)  # (K, 2)


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, Path]:
    """The tiny Qwen2.5-VL and Qwen3-VL (built offline once, cached), by kind."""
    from samtok_rl.tiny import build_tiny_vlm

    return {kind: build_tiny_vlm(kind) for kind in ("qwen2_5_vl", "qwen3_vl")}


@pytest.fixture(scope="session")
def datasets_dir(tmp_path_factory) -> dict[str, str]:
    """The bundled sample prepared for both tasks (fixed codes): `{"gres": folder, "gcg": folder}`."""
    from samtok_rl.prepare import prepare, read_source

    root = tmp_path_factory.mktemp("prepared")
    out = {}
    for task in ("gres", "gcg"):
        prepare(read_source(task, sample=True), task, root / task, FixedCodes, tokenizer_id="fixed", progress=False)
        out[task] = str(root / task)
    return out


@pytest.fixture(scope="session")
def authors_files(tmp_path_factory) -> dict[str, str]:
    """Small files in the authors' RL parquet schema, coded with the micro tokenizer: `{"gres": 50 rows in
    gres8k_train.parquet's proportions with the authors' image paths, "gcg": 4 GCG rows with embedded images}`."""
    from samtok_rl.data.easyr1_synthetic import gcg_like, gres8k_like, write_easyr1_parquet
    from samtok_rl.mask_tokenizer import build_mask_tokenizer

    micro = build_mask_tokenizer("micro", device="cpu")
    root = tmp_path_factory.mktemp("authors")
    return {
        "gres": str(write_easyr1_parquet(gres8k_like(50, micro), root / "gres8k_like.parquet")),
        "gcg": str(write_easyr1_parquet(gcg_like(4, micro), root / "gcg_like.parquet")),
    }


# The report tests open the HTML in a real headless Chromium (Debian's `chromium`). Without one they skip, unless
# SAMTOK_RL_REQUIRE_BROWSER=1 (set by .ci/run, which installs it), where a missing browser fails them.
BROWSER_ENV = "SAMTOK_RL_REQUIRE_BROWSER"


@pytest.fixture(scope="session")
def browser():
    """`open_page(index.html) -> (self-check dict, console lines, final DOM, screenshot (H, W, 3) uint8)`, headless."""
    import html
    import json
    import shutil
    import subprocess
    import tempfile

    import numpy as np
    from PIL import Image

    exe = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    if exe is None:
        if os.environ.get(BROWSER_ENV, "") not in ("", "0"):
            pytest.fail(f"{BROWSER_ENV} is set but no chromium is on PATH")
        pytest.skip("no chromium on PATH (apt-get install chromium)")

    def open_page(index: Path, width: int = 1300, height: int = 1400):
        flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                 "--enable-logging=stderr", "--v=0", f"--window-size={width},{height}"]  # fmt: skip
        url = index.resolve().as_uri()
        with tempfile.TemporaryDirectory() as tmp:
            profile = [f"--user-data-dir={tmp}/profile"]
            dom = subprocess.run([*flags, *profile, "--dump-dom", url + "#selfcheck"],
                                 capture_output=True, text=True, timeout=180)  # fmt: skip
            shot_path = Path(tmp) / "shot.png"
            subprocess.run([*flags, *profile, f"--screenshot={shot_path}", url], capture_output=True, timeout=180)
            shot = np.asarray(Image.open(shot_path).convert("RGB"))
        found = dom.stdout.split('<pre id="selfcheck">', 1)
        assert len(found) == 2, f"the page's self-check did not run:\n{dom.stderr[-3000:]}"
        check = json.loads(html.unescape(found[1].split("</pre>", 1)[0]))
        console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
        return check, console, dom.stdout, shot

    return open_page


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A tiny random BERT + WordPiece tokenizer built from config and saved locally; no hub access."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = "a the man dog cat red box horse sky car park two dogs in on".split()
    vocab = {t: i for i, t in enumerate(specials + words)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    path = tmp_path_factory.mktemp("tiny_bert")
    BertTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    ).save_pretrained(path)  # fmt: skip
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=512,
    )  # fmt: skip
    BertModel(config).save_pretrained(path)
    return path
