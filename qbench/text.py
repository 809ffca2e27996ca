"""Plain text as a decoder's evaluation data: ``--data notes.txt``, a ``.jsonl`` file, or a folder of them.

The text is tokenized with the model's own tokenizer (``tokenizer.json`` beside the model, as
onnxruntime-genai's model builder and ``qbench zoo install`` write it), documents joined by a
blank line into one stream, and cut into windows of ``WINDOW`` tokens; each position's label is
the token after it. A ``.jsonl`` file holds one JSON object per line with a ``"text"`` string
(or the line is a JSON string itself).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from qbench.errors import QbenchError

WINDOW = 128  # tokens per evaluation window
TEXT_SUFFIXES = (".txt", ".jsonl")
TOKENIZER_FILE = "tokenizer.json"


def is_text(path: str | pathlib.Path) -> bool:
    path = pathlib.Path(path)
    return path.suffix in TEXT_SUFFIXES or path.is_dir()


def documents(path: pathlib.Path) -> list[str]:
    """The documents of a text file, a ``.jsonl`` file, or every such file under a folder (sorted)."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())
        if not files:
            raise QbenchError(f"{path} holds no .txt or .jsonl files")
        return [doc for file in files for doc in documents(file)]
    if not path.is_file():
        raise QbenchError(f"data file not found: {path} (pass a .txt, a .jsonl, a folder of them, or an .npz)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise QbenchError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    if path.suffix != ".jsonl":
        return [text]
    docs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise QbenchError(f"{path}:{number} is not JSON ({exc.msg}); each line must be one object") from None
        doc = item.get("text") if isinstance(item, dict) else item
        if not isinstance(doc, str):
            raise QbenchError(f'{path}:{number}: each line must be {{"text": "..."}} or a JSON string')
        docs.append(doc)
    return docs


def load_tokenizer(model_path: str | pathlib.Path):
    """The ``tokenizers`` tokenizer saved beside the model."""
    from tokenizers import Tokenizer

    path = pathlib.Path(model_path)
    file = (path if path.is_dir() else path.parent) / TOKENIZER_FILE
    if not file.is_file():
        raise QbenchError(
            f"text data needs the model's tokenizer: put its {TOKENIZER_FILE} in {file.parent} "
            "(onnxruntime-genai's model builder writes one), or pass token ids in an .npz"
        )
    try:
        return Tokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises a bare Exception on a malformed file
        raise QbenchError(f"{file} is not a tokenizers file: {exc}") from None


def token_windows(tokenizer, docs: list[str], window: int = WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """``(input_ids, labels)``, each ``[windows, window]``: the documents as one token stream,
    each window followed by the next token (its last label)."""
    stream: list[int] = []
    for doc in docs:
        stream += tokenizer.encode(doc.strip() + "\n\n", add_special_tokens=False).ids
    count = (len(stream) - 1) // window
    if count < 2:
        raise QbenchError(f"the text is {len(stream)} tokens: at least {2 * window + 1} make two windows of {window}")
    ids = np.array(stream[: count * window + 1], np.int64)
    return ids[:-1].reshape(count, window), ids[1:].reshape(count, window)
