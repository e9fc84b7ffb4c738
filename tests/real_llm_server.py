"""A real OpenAI-compatible LLM server for the integration tier: ``transformers serve`` (part of the pinned
transformers) serving a tiny random-initialised Llama saved to a folder.

It speaks the real wire protocol as a real deployment's server does (it ignores ``n``, returns no logprobs and
answers free text), at a fraction of a real model's cost: a judge that never gives a verdict, which the pipeline must
measure as uninformative and never let flip a label. The tokenizer is the packaged MiniLM's (offline), given a chat
template and told to pass no ``token_type_ids`` (a Llama takes none).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from airflow_cluster import REPO, free_port, wait_answering

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def tiny_llama(folder: Path) -> Path:
    """A random-initialised 2-layer Llama and a tokenizer with a chat template, saved once to ``folder``."""
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from synpref.models.embedding import default_embedder

    tok = AutoTokenizer.from_pretrained(default_embedder())
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tok),
        max_position_embeddings=8192,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tok.sep_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    settings = folder / "tokenizer_config.json"
    settings.write_text(
        json.dumps({**json.loads(settings.read_text()), "model_input_names": ["input_ids", "attention_mask"]})
    )
    return folder


class TransformersServe:
    """``transformers serve`` on loopback, pinned to one model folder (requests name the folder as the model)."""

    def __init__(self, model: Path, log: Path) -> None:
        self.model, self.port = str(model), free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        args = [str(REPO / ".venv" / "bin" / "transformers"), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            [*args, "--device", "cpu", self.model], env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        wait_answering(f"http://127.0.0.1:{self.port}/health", self.proc, log)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
