"""PP-OCRv4 text detection and recognition from the ``rapidocr-onnxruntime`` wheel, scored on
text that qbench renders itself (Pillow's built-in font), so the labels are known exactly.

The export upgrades the Paddle exports (opset 12) to opset 13 once and fixes the image size
(detection 320x320, recognition 48x320; batch stays dynamic), so every run compiles the same
shapes. Preprocessing follows rapidocr: pixels scaled to [-1, 1], recognition lines resized to
height 48 and padded on the right.
"""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import onnx

from qbench.model import MIN_OPSET

DET_SIZE = 320
REC_HEIGHT, REC_WIDTH = 48, 320
MAX_LABEL = 32  # recognition labels: character indices padded with -1 to this length

WORDS = (
    "invoice total amount paid due date order number customer account balance receipt store "
    "open closed monday friday street avenue road city north south east west station platform "
    "exit entrance ticket price discount sale coffee bread milk water tea sugar apple orange "
    "hotel room floor parking office bank post school library museum park garden market "
    "phone email name address delivery package weight size color black white green blue red "
    "model serial version batch lot quantity unit item code reference page chapter section"
).split()


def _rapidocr_models() -> pathlib.Path:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    return pathlib.Path(spec.origin).parent / "models"


def _export_model(source: pathlib.Path, target: pathlib.Path, height: int, width: int) -> onnx.ModelProto:
    from onnx import version_converter

    proto = version_converter.convert_version(onnx.load(str(source)), MIN_OPSET)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    dims[0].Clear()
    dims[0].dim_param = "batch"
    for dim, size in zip(dims[2:], (height, width), strict=True):
        dim.Clear()
        dim.dim_value = size
    onnx.save_model(proto, str(target))
    return proto


def _phrase(rng: np.random.Generator) -> str:
    """A short line of real words with, now and then, a number, as on receipts and signs."""
    words = list(rng.choice(WORDS, size=int(rng.integers(1, 4))))
    if rng.random() < 0.5:
        words.insert(int(rng.integers(0, len(words) + 1)), str(int(rng.integers(1, 9999))))
    return " ".join(words)


def _render_line(text: str, rng: np.random.Generator):
    """Dark text on light paper with a margin, as a Pillow greyscale image."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=int(rng.integers(22, 34)))
    left, top, right, bottom = font.getbbox(text)
    canvas = Image.new("L", (right - left + 16, bottom - top + 12), color=int(rng.integers(200, 256)))
    ImageDraw.Draw(canvas).text((8 - left, 6 - top), text, fill=int(rng.integers(0, 70)), font=font)
    return canvas


def _to_network(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Greyscale [0, 255] plus scanner noise -> the 3-channel [-1, 1] input PP-OCR expects."""
    noisy = np.clip(pixels / 255.0 + rng.normal(0, 0.03, pixels.shape), 0, 1)
    return np.repeat(((noisy - 0.5) / 0.5)[None].astype(np.float32), 3, axis=0)


def render_lines(count: int, seed: int, characters: str) -> tuple[np.ndarray, np.ndarray]:
    """Recognition inputs [count, 3, 48, 320] and labels [count, MAX_LABEL]: 1-based indices of
    each character in ``characters`` (index 0 is the CTC blank), padded with -1."""
    rng = np.random.default_rng(seed)
    index = {c: i + 1 for i, c in enumerate(characters)}
    images = np.zeros((count, 3, REC_HEIGHT, REC_WIDTH), np.float32)
    labels = np.full((count, MAX_LABEL), -1, np.int64)
    for i in range(count):
        text = _phrase(rng)
        canvas = _render_line(text, rng)
        width = min(REC_WIDTH, max(16, round(canvas.width * REC_HEIGHT / canvas.height)))
        images[i, :, :, :width] = _to_network(np.asarray(canvas.resize((width, REC_HEIGHT)), np.float64), rng)
        labels[i, : len(text)] = [index[c] for c in text[:MAX_LABEL]]
    return images, labels


def render_pages(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Detection inputs [count, 3, 320, 320] with 2-4 text lines each, and the text mask
    [count, 320, 320] (uint8, 1 inside each line's text box)."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    images = np.zeros((count, 3, DET_SIZE, DET_SIZE), np.float32)
    masks = np.zeros((count, DET_SIZE, DET_SIZE), np.uint8)
    for i in range(count):
        page = Image.new("L", (DET_SIZE, DET_SIZE), color=int(rng.integers(200, 256)))
        draw = ImageDraw.Draw(page)
        y = int(rng.integers(8, 40))
        for _ in range(int(rng.integers(2, 5))):
            text, font = _phrase(rng), ImageFont.load_default(size=int(rng.integers(18, 30)))
            left, top, right, bottom = font.getbbox(text)
            width, height = min(right - left, DET_SIZE - 16), bottom - top
            if y + height > DET_SIZE - 8:
                break
            x = int(rng.integers(8, DET_SIZE - 8 - width + 1))
            draw.text((x - left, y - top), text, fill=int(rng.integers(0, 70)), font=font)
            masks[i, y : y + height, x : x + width] = 1
            y += height + int(rng.integers(12, 50))
        images[i] = _to_network(np.asarray(page, np.float64), rng)
    return images, masks


def recognition_characters(proto: onnx.ModelProto) -> str:
    """The recognizer's characters in output order (after the blank): its dictionary, then space."""
    meta = {p.key: p.value for p in proto.metadata_props}
    return "".join(meta["character"].splitlines()) + " "


def export_recognition(target: pathlib.Path) -> None:
    proto = _export_model(
        _rapidocr_models() / "ch_PP-OCRv4_rec_infer.onnx", target / "model.onnx", REC_HEIGHT, REC_WIDTH
    )
    characters = recognition_characters(proto)
    images, labels = render_lines(64, seed=1, characters=characters)
    np.savez_compressed(target / "calib.npz", x=images)
    images, labels = render_lines(200, seed=2, characters=characters)
    np.savez_compressed(target / "eval.npz", x=images, labels=labels)


def export_detection(target: pathlib.Path) -> None:
    _export_model(_rapidocr_models() / "ch_PP-OCRv4_det_infer.onnx", target / "model.onnx", DET_SIZE, DET_SIZE)
    images, _ = render_pages(32, seed=1)
    np.savez_compressed(target / "calib.npz", x=images)
    images, masks = render_pages(96, seed=2)
    np.savez_compressed(target / "eval.npz", x=images, labels=masks)
