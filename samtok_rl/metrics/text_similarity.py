"""Text similarity for GCG Recall: cosine of mean-pooled BERT embeddings, as the GLaMM evaluator computes it."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer


class BertTextSimilarity:
    """`text_similarity(labels, phrases)` for [`gcg_metrics`]: the [len(labels), len(phrases)] cosine matrix.

    Each string is embedded on its own (no padding, so nothing but its own tokens enters the mean) as the mean of
    BERT's last hidden state over **all** token positions, [CLS] and [SEP] included, with `max_length=512` and
    truncation. This is the reference's `get_bert_embedding` + `sklearn` `cosine_similarity` (plain transformers,
    not sentence-transformers). The model loads on the first call; embeddings are cached by string, since GCG
    phrases repeat a lot.

    Args:
        model_name_or_path (`str` or `Path`, *optional*, defaults to `"bert-base-uncased"`):
            Hub id or local folder of a BERT checkpoint with its tokenizer. Pass a local folder offline.
        device (`str`, *optional*, defaults to `"cpu"`):
            Torch device for the encoder.

    Example:

    >>> sim = BertTextSimilarity("bert-base-uncased")  # doctest: +SKIP
    >>> sim(["a dog", "the sky"], ["dog"]).shape  # doctest: +SKIP
    (2, 1)

    """

    def __init__(self, model_name_or_path: str | Path = "bert-base-uncased", device: str = "cpu"):
        self.model_name_or_path = str(model_name_or_path)
        self.device = device
        self._tokenizer = None
        self._model = None
        self._cache: dict[str, np.ndarray] = {}

    def _load(self) -> None:
        self._tokenizer = AutoTokenizer.from_pretrained(self.model_name_or_path)
        self._model = AutoModel.from_pretrained(self.model_name_or_path).to(self.device).eval()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Mean-pooled last hidden states, `(len(texts), hidden_size)` float32."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            if self._model is None:
                self._load()
            with torch.inference_mode():
                for text in missing:
                    inputs = self._tokenizer(text, return_tensors="pt", max_length=512, truncation=True).to(
                        self.device
                    )
                    hidden = self._model(**inputs).last_hidden_state[0]  # (seq_len, hidden)
                    self._cache[text] = hidden.mean(dim=0).float().cpu().numpy()
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, 0), dtype=np.float32)

    def __call__(self, labels: Sequence[str], phrases: Sequence[str]) -> np.ndarray:
        if not labels or not phrases:
            return np.zeros((len(labels), len(phrases)))
        a = self.embed(labels).astype(np.float64)
        b = self.embed(phrases).astype(np.float64)
        # Row-normalise as sklearn's cosine_similarity does (a zero vector stays zero instead of dividing by 0).
        a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), np.finfo(np.float64).tiny)
        b /= np.maximum(np.linalg.norm(b, axis=1, keepdims=True), np.finfo(np.float64).tiny)
        return a @ b.T
