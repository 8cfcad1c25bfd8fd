"""Generation backends of the eval runner and `samtok-rl filter` (greedy, or sampled): transformers `generate` (`HFGenerator`) and vLLM (`VLLMGenerator`).

Both take the task questions and PIL images and return the decoded outputs (`skip_special_tokens=False`). vLLM is
imported only when a `VLLMGenerator` is built: it is not a dependency of the main environment.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from samtok_rl.errors import UsageError
from samtok_rl.prompts import conversation


class HFGenerator:
    """Greedy generation with transformers `generate` (CPU or GPU), left-padded batches.

    Args:
        model (`str`): model folder or Hub id.
        device (`str`): torch device; bf16 on CUDA, fp32 otherwise.
        max_new_tokens (`int`): generation budget.
        min_pixels (`int`), max_pixels (`int`): the image processor's resolution bounds.
    """

    def __init__(self, model: str, device: str, max_new_tokens: int, min_pixels: int, max_pixels: int):
        processor = AutoProcessor.from_pretrained(model, min_pixels=min_pixels, max_pixels=max_pixels)
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
        self._bind(AutoModelForImageTextToText.from_pretrained(model, dtype=dtype).to(device).eval(), processor,
                   max_new_tokens)  # fmt: skip

    @classmethod
    def wrap(cls, model, processor, max_new_tokens: int) -> HFGenerator:
        """A generator over an already loaded model and processor (the policy during training), left as they are:
        the model's mode and the processor's padding side are not changed."""
        self = cls.__new__(cls)
        self._bind(model, processor, max_new_tokens)
        return self

    def _bind(self, model, processor, max_new_tokens: int) -> None:
        self.processor, self.model, self.device, self.max_new_tokens = processor, model, model.device, max_new_tokens
        eos = model.generation_config.eos_token_id
        self.stop_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if processor.tokenizer.eos_token_id is not None:
            self.stop_ids.add(processor.tokenizer.eos_token_id)
        self.pad_id = processor.tokenizer.pad_token_id

    def image_resolution(self) -> dict:
        size = self.processor.image_processor.size
        return {"min_pixels": int(size["shortest_edge"]), "max_pixels": int(size["longest_edge"])}

    def close(self) -> None:
        """Release the model (the same call as `VLLMGenerator.close`)."""
        self.model = None

    def generate(self, questions: Sequence[str], images: Sequence[Image.Image]) -> list[str]:
        return [texts[0] for texts in self._generate(questions, images, do_sample=False)]

    def sample(
        self, questions: Sequence[str], images: Sequence[Image.Image], n: int, temperature: float, top_p: float,
        top_k: int, seed: int,
    ) -> list[list[str]]:  # fmt: skip
        """`n` sampled completions per question (`samtok-rl filter`); `seed` makes the call reproducible."""
        torch.manual_seed(seed)
        return self._generate(questions, images, do_sample=True, num_return_sequences=n, temperature=temperature,
                              top_p=top_p, top_k=top_k)  # fmt: skip

    def _generate(self, questions, images, do_sample: bool, num_return_sequences: int = 1, **sampling):
        texts = [
            self.processor.apply_chat_template(conversation(q), tokenize=False, add_generation_prompt=True)
            for q in questions
        ]
        inputs = self.processor(
            text=texts, images=list(images), padding=True, padding_side="left", return_tensors="pt"
        ).to(self.device)
        if not do_sample:
            sampling = {"temperature": None, "top_p": None, "top_k": None}
        # no_grad, not inference_mode: on the policy during training (FSDP2), tensors made in inference mode (the
        # all-gathered parameters' buffers) would refuse the in-place updates of the next training step.
        with torch.no_grad():
            out = self.model.generate(
                **inputs, max_new_tokens=self.max_new_tokens, do_sample=do_sample,
                num_return_sequences=num_return_sequences, **sampling,
            )  # fmt: skip
        results = []
        for ids in out[:, inputs["input_ids"].shape[1] :].tolist():
            # Cut at the first stop token; the pad id can follow it in a batch.
            for k, token in enumerate(ids):
                if token in self.stop_ids:
                    ids = ids[:k]
                    break
            ids = [t for t in ids if t != self.pad_id]
            results.append(
                self.processor.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            )
        # generate returns a question's samples next to each other
        return [results[k : k + num_return_sequences] for k in range(0, len(results), num_return_sequences)]

    def strip_tokens(self) -> list[str]:
        tok = self.processor.tokenizer
        return [t for t in (tok.eos_token, tok.pad_token, "<|im_end|>", "<|endoftext|>") if t]


class VLLMGenerator:
    """Greedy generation with vLLM (imported lazily: it is not a dependency of the main environment).

    The prompt is the processor's chat template with the image passed as `multi_modal_data`; `min_pixels` /
    `max_pixels` go to vLLM's HF processor through `mm_processor_kwargs`; the seed is fixed.
    """

    def __init__(
        self,
        model: str,
        max_new_tokens: int,
        min_pixels: int,
        max_pixels: int,
        seed: int,
        max_model_len: int,
        gpu_memory_utilization: float,
        tensor_parallel_size: int,
    ):
        from vllm import LLM  # optional: not a dependency of the main environment

        # The processor first: a model folder it cannot read fails before the engine starts (minutes).
        processor = AutoProcessor.from_pretrained(model, min_pixels=min_pixels, max_pixels=max_pixels)
        llm = LLM(
            model=model,
            seed=seed,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            limit_mm_per_prompt={"image": 1, "video": 0},
            mm_processor_kwargs={"min_pixels": min_pixels, "max_pixels": max_pixels},
        )
        self._bind(llm, processor, max_new_tokens, seed)

    @classmethod
    def wrap(cls, llm, processor, max_new_tokens: int, seed: int) -> VLLMGenerator:
        """A generator over a running engine (the trainer's colocated one, holding the synced policy weights)."""
        self = cls.__new__(cls)
        self._bind(llm, processor, max_new_tokens, seed)
        return self

    def _bind(self, llm, processor, max_new_tokens: int, seed: int) -> None:
        from vllm import SamplingParams

        self.processor, self.llm = processor, llm
        self.sampling = SamplingParams(
            temperature=0.0, top_p=1.0, max_tokens=max_new_tokens, skip_special_tokens=False, seed=seed
        )

    image_resolution = HFGenerator.image_resolution
    strip_tokens = HFGenerator.strip_tokens

    def close(self) -> None:
        """Shut the engine and its worker processes down now; otherwise they stop at interpreter exit, when the
        logging streams may already be closed."""
        self.llm.llm_engine.engine_core.shutdown()

    def _prompts(self, questions: Sequence[str], images: Sequence[Image.Image]) -> list[dict]:
        return [
            {"prompt": self.processor.apply_chat_template(conversation(q), tokenize=False, add_generation_prompt=True),
             "multi_modal_data": {"image": image}}
            for q, image in zip(questions, images)
        ]  # fmt: skip

    def generate(self, questions: Sequence[str], images: Sequence[Image.Image]) -> list[str]:
        prompts = self._prompts(questions, images)
        outputs = self.llm.generate(prompts, self.sampling, use_tqdm=False)
        return [o.outputs[0].text for o in outputs]

    def sample(
        self, questions: Sequence[str], images: Sequence[Image.Image], n: int, temperature: float, top_p: float,
        top_k: int, seed: int,
    ) -> list[list[str]]:  # fmt: skip
        """`n` sampled completions per question (`samtok-rl filter`); `seed` makes the call reproducible."""
        from vllm import SamplingParams

        params = SamplingParams(n=n, temperature=temperature, top_p=top_p, top_k=top_k if top_k > 0 else -1,
                                max_tokens=self.sampling.max_tokens, skip_special_tokens=False, seed=seed)  # fmt: skip
        outputs = self.llm.generate(self._prompts(questions, images), params, use_tqdm=False)
        return [[c.text for c in o.outputs] for o in outputs]


def resolve_backend(backend: str, device: str) -> str:
    """`auto` is vLLM when it is importable and the device is CUDA, else transformers; `vllm` needs vLLM installed.

    Example:
    >>> resolve_backend("auto", "cpu")
    'hf'
    """
    has_vllm = importlib.util.find_spec("vllm") is not None
    if backend == "vllm" and not has_vllm:
        raise UsageError('backend vllm: vllm is not installed: pip install -e ".[vllm]", or use --backend hf')
    if backend != "auto":
        return backend
    return "vllm" if device.startswith("cuda") and has_vllm else "hf"
