"""Reference logits from Hugging Face ``LlamaForCausalLM``, run in a separate environment that has
torch and transformers (qbench itself never imports them).

    python llama_logits.py weights.npz config.json ids.npy out.npz

``weights.npz`` holds the Hugging Face state dict as float32 arrays; ``ids.npy`` is
``[samples, tokens]``. Writes ``logits`` (full-sequence forward pass, no cache) and ``decoded``
(the logits of the last token when the sequence is fed as a prefill of all but the last token
followed by one cached decode step), so both of the graph's modes are checked.
"""

import json
import sys

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main(weights_path: str, config_path: str, ids_path: str, out_path: str) -> None:
    settings = json.loads(open(config_path).read())
    config = LlamaConfig(
        vocab_size=settings["vocab"],
        hidden_size=settings["hidden"],
        intermediate_size=settings["ffn"],
        num_hidden_layers=settings["layers"],
        num_attention_heads=settings["heads"],
        num_key_value_heads=settings["kv_heads"],
        rope_theta=settings["rope_base"],
        rms_norm_eps=settings["eps"],
        tie_word_embeddings=True,
        max_position_embeddings=8192,
        attn_implementation="eager",
    )
    model = LlamaForCausalLM(config).eval()
    with np.load(weights_path) as archive:
        state = {name: torch.from_numpy(archive[name]) for name in archive.files}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()
    ids = torch.from_numpy(np.load(ids_path))
    with torch.no_grad():
        logits = model(input_ids=ids).logits.numpy()
        prefix = model(input_ids=ids[:, :-1], use_cache=True)
        step = model(input_ids=ids[:, -1:], past_key_values=prefix.past_key_values, use_cache=True)
    np.savez(out_path, logits=logits, decoded=step.logits[:, -1].numpy())


if __name__ == "__main__":
    main(*sys.argv[1:])
