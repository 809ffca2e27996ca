"""A plan's graph on ONNX Runtime put together from layers quantized once per process: its
weight-only layers from ``_nbits``' pieces, its int8-dynamic ones from ``_dynamic``'s."""

from __future__ import annotations

import pathlib

from qbench.backends import _nbits as nbits
from qbench.backends._dynamic import DynamicPiece, splice_dynamic
from qbench.model import save_onnx
from qbench.plan import WEIGHT_ONLY_BITS, PrecisionPlan


def write_spliced(
    source: pathlib.Path,
    out: pathlib.Path,
    plan: PrecisionPlan,
    base: pathlib.Path,
    dynamic: dict[str, DynamicPiece] | None = None,
) -> None:
    """Rewrite the plan's weight-only MatMuls of ``source`` into MatMulNBits, each layer spliced
    from ``base``'s pre-quantized pieces of its format (``nbits.pieces``), any other through the
    quantizer; and the int8-dynamic layers in ``dynamic`` (``_dynamic.dynamic_pieces`` of
    ``base``, given only when ``source`` is ``base``) into ``quantize_dynamic``'s nodes. ``base``
    is the unquantized model ``source`` was written from (often itself: then it is read once per
    process)."""
    import onnx

    o = plan.options
    formats = [
        (bits, layers, nbits.pieces(base, bits, o.block_size, o.get("accuracy_level"), o.weight_symmetric, layers))
        for precision, bits in WEIGHT_ONLY_BITS.items()
        if (layers := plan.layers_in(precision))
    ]
    dynamic = dynamic or {}
    weights_from = None
    if source.resolve() == base.resolve():
        weights_from = base.resolve().parent
        replaced = {
            layer: found.replaced[layer][0]
            for _, layers, found in formats
            for layer in layers
            if layer in found.replaced
        }
        replaced.update({layer: piece.replaced[0] for layer, piece in dynamic.items()})
        shell, _ = nbits._base_parts(base)
        kept_readers = {name for n in shell.graph.node if n.name not in replaced for name in n.input}
        model, dims = nbits._assembled(base, set(replaced.values()) - kept_readers)
    elif dynamic:
        raise AssertionError("int8-dynamic pieces are spliced into the base model only")
    else:
        model, dims = onnx.load(str(source)), None
    tie = nbits.tied_embedding(model)
    # The head keeps its output name when it becomes MatMulNBits; its node name changes.
    head_output = next((n.output[0] for n in model.graph.node if tie and n.name == tie[1]), None)
    if dynamic and splice_dynamic(model, dynamic, dims):
        raise AssertionError("an int8-dynamic piece was made from another weight than the base model's")
    for bits, layers, found in formats:
        left = nbits.splice(model, layers, found, dims)
        if left:
            model = nbits._compress(model, bits, o.block_size, o.get("accuracy_level"), left, o.weight_symmetric)
    if tie and head_output:
        nbits.share_tied_embedding(model, tie[0], head_output)
    save_onnx(model, out, weights_from)
