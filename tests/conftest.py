"""Shared test setup: offline, CPU only, quiet tokenizers."""

import os


# Nothing may reach the hub: every model in the tests is built from config on the fly.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
