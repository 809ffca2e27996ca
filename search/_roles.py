"""What a plan chose per kind of layer (attention, FFN, LM head), read from the layer names
exporters give transformer blocks: the summary a user of an LLM plan reads first. Other models'
last layer is their "output head" (a CNN's classifier is no LM head)."""

from __future__ import annotations

import re
from collections import Counter

from qbench.decoder import DecoderInputs
from qbench.model import OnnxModel
from qbench.plan import PrecisionPlan

ROLES = ("attention", "FFN", "LM head", "output head", "other")
# Matched against the lower-cased layer name; Hugging Face, optimum and qbench's own export names.
_ATTENTION = re.compile(r"attn|attention|q_proj|k_proj|v_proj|o_proj|qkv|query|key|value|scores|context")
_FFN = re.compile(r"mlp|ffn|feed_forward|gate_proj|up_proj|down_proj|fc1|fc2|intermediate|w1\b|w2\b|w3\b")
_HEAD = re.compile(r"lm_head|classifier")


def layer_roles(model: OnnxModel) -> dict[str, str]:
    """Each layer's role. The head is the layer named so, or the one writing a graph output; it
    is an LM head when so named or when the model takes a key/value cache."""
    outputs = set(model.output_names)
    writes_output = {n.name for n in model.proto.graph.node if outputs.intersection(n.output)}
    decoder = DecoderInputs.of(model) is not None
    roles = {}
    for layer in model.layers:
        name = layer.name.lower()
        if _HEAD.search(name) or layer.name in writes_output:
            roles[layer.name] = "LM head" if decoder or "lm_head" in name else "output head"
        elif _ATTENTION.search(name):
            roles[layer.name] = "attention"
        elif _FFN.search(name):
            roles[layer.name] = "FFN"
        else:
            roles[layer.name] = "other"
    return roles


def summarize_by_role(model: OnnxModel, plan: PrecisionPlan) -> dict[str, Counter]:
    """``{role: Counter(precision: layers)}`` for the roles the model has, in ``ROLES`` order."""
    counts: dict[str, Counter] = {}
    for layer, role in layer_roles(model).items():
        counts.setdefault(role, Counter())[plan.precision(layer)] += 1
    return {role: counts[role] for role in ROLES if role in counts}


def role_summary_text(model: OnnxModel, plan: PrecisionPlan) -> str:
    """``attention: 120 int8-weight, 60 fp32 · FFN: 90 int4-weight · LM head: 1 int8-weight``."""
    parts = []
    for role, counter in summarize_by_role(model, plan).items():
        parts.append(f"{role}: " + ", ".join(f"{n} {p}" for p, n in counter.most_common()))
    return " · ".join(parts)
