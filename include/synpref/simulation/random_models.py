"""Random-initialised reward-model backbones built from a config (no download): decoders for tests and
speed benchmarks. Their scores mean nothing; their shapes, chat formatting and speed are real (throughput
does not depend on the weights).

``tiny`` is a CPU-test size; ``qwen3-0.6b`` / ``llama-3.1-8b`` type the published ``config.json`` values of
those checkpoints, for measuring real-size speed on a GPU.
"""

from __future__ import annotations

import os
from pathlib import Path

# a chat template in the shape of real ones: role headers, the content, an end-of-turn token
CHAT_TEMPLATE = (
    "{% for m in messages %}[unused1] {{ m['role'] }}\n{{ m['content'] }} [SEP]\n{% endfor %}"
    "{% if add_generation_prompt %}[unused1] assistant\n{% endif %}"
)
SIZES = {
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "intermediate_size": 128},
    "minilm-sized": {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 6, "num_key_value_heads": 2,
                     "intermediate_size": 1536, "head_dim": 64},
    "qwen3-0.6b": {"hidden_size": 1024, "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
                   "intermediate_size": 3072, "head_dim": 128},
    "llama-3.1-8b": {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                     "intermediate_size": 14336},
}  # fmt: skip


def chat_tokenizer(pad: bool = True):
    """The packaged MiniLM's WordPiece tokenizer with a chat template (offline); ``pad=False`` leaves it without a
    pad token, as Llama tokenizers ship."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    from synpref.models.embedding import default_embedder

    tok = AutoTokenizer.from_pretrained(default_embedder())
    tok.chat_template = CHAT_TEMPLATE
    tok.eos_token = "[SEP]"
    if not pad:
        tok.pad_token = None
    return tok


def random_reward_model(directory: Path, family: str = "qwen3", size: str = "tiny", tokenizer=None, seed: int = 0):
    """Save a random-initialised ``family`` (qwen3 | llama) sequence-classification model (1 output) of ``size``
    with a chat tokenizer under ``directory``; returns the directory (an ``rm_backbone`` value)."""
    import torch
    from transformers import AutoModelForSequenceClassification, LlamaConfig, Qwen3Config

    tok = tokenizer if tokenizer is not None else chat_tokenizer(pad=family != "llama")
    config_class = {"qwen3": Qwen3Config, "llama": LlamaConfig}[family]
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    config = config_class(**SIZES[size], vocab_size=len(tok), num_labels=1, pad_token_id=pad_id)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    directory = Path(directory)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory
