"""FP8 (e4m3) weight formats: compressed-tensors float, quant_method "fp8", `--quantization fp8`.

Registers with models.quantization:
- compressed-tensors, weights of type "float" (8 bits, symmetric, static): strategy "tensor",
  "channel" or "block" (`block_structure`); activations none (weight-only), static per-tensor
  (`input_scale`) or dynamic (per token, per tensor or per group: computed per token here).
- quant_method "fp8" (vLLM's and transformers' FineGrainedFP8 format): with
  `weight_block_size` [bn, bk], block scales named `weight_scale_inv` and dynamic activations;
  without it, one per-tensor `weight_scale` per projection and, for `activation_scheme`
  "static", an `input_scale`. `modules_to_not_convert` / `ignored_layers` stay dense.
- `--quantization fp8` on dense weights: per-channel scales computed at load, activations
  quantized per token where the GPU multiplies in FP8.
Every layer of the model that is a LinearBase (attention and MLP projections) takes the format
unless ignored; the LM head and embeddings stay dense. Anything else is a ValueError that says
what is supported. Imports: cormorant.layers (fp8_linear, linear), cormorant.models.quantization.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from cormorant.layers.fp8_linear import Fp8LinearMethod
from cormorant.layers.linear import LinearBase, LinearMethodChooser
from cormorant.models.quantization import (QuantScheme, checkpoint_names, ignored,
                                           register_checkpoint_format,
                                           register_compressed_tensors, register_online)

CT_FORMATS = ("float-quantized", "naive-quantized")
CT_WEIGHT_STRATEGIES = ("tensor", "channel", "block")
CT_INPUT_STRATEGIES = {False: ("tensor",), True: ("tensor", "token", "group")}  # by dynamic


def _chooser(make: Callable[[], Fp8LinearMethod], ignore: list[str]
             ) -> Callable[[nn.Module], LinearMethodChooser]:
    """A scheme's chooser: a fresh method per quantized layer; ignored layers stay dense."""
    def chooser(model: nn.Module) -> LinearMethodChooser:
        def choose(name: str, layer: LinearBase) -> Fp8LinearMethod | None:
            return None if ignored(checkpoint_names(model, name), ignore) else make()
        return choose
    return chooser


def _check_fp8_args(args: dict, what: str) -> None:
    if args.get("num_bits") != 8 or args.get("type") != "float":
        raise ValueError(f"compressed-tensors: {what} of {args.get('num_bits')} bits of type "
                         f"{args.get('type')!r} are not FP8; supported: 8-bit float")
    if not args.get("symmetric", True):
        raise ValueError(f"compressed-tensors: asymmetric FP8 {what} are not supported")


def _block(args: dict) -> tuple[int, int] | None:
    block = args.get("block_structure")
    if args.get("strategy") != "block":
        return None
    if isinstance(block, str):  # older configs: "128x128"
        block = [int(v) for v in block.lower().split("x")]
    if not (isinstance(block, (list, tuple)) and len(block) == 2
            and all(isinstance(v, int) and v > 0 for v in block)):
        raise ValueError(f"compressed-tensors: block_structure {block!r} is not two positive "
                         "integers")
    return int(block[0]), int(block[1])


@register_compressed_tensors("float")
def compressed_tensors_fp8(quant_config: dict, group: dict) -> QuantScheme:
    fmt = group.get("format") or quant_config.get("format")
    if fmt not in CT_FORMATS:
        raise ValueError(f"compressed-tensors: FP8 weights in format {fmt!r} are not "
                         f"supported; supported: {', '.join(CT_FORMATS)}")
    if group.get("targets") != ["Linear"]:
        raise ValueError(f"compressed-tensors: targets {group.get('targets')} are not "
                         "supported; supported: ['Linear']")
    weights = group["weights"]
    _check_fp8_args(weights, "weights")
    strategy = weights.get("strategy")
    if strategy not in CT_WEIGHT_STRATEGIES or weights.get("dynamic"):
        raise ValueError(f"compressed-tensors: FP8 weight strategy {strategy!r} "
                         f"(dynamic={weights.get('dynamic')}) is not supported; supported: "
                         f"static {', '.join(CT_WEIGHT_STRATEGIES)}")
    if group.get("output_activations"):
        raise ValueError("compressed-tensors: quantized output activations are not supported")
    static_input = False
    if (inputs := group.get("input_activations")) is not None:
        _check_fp8_args(inputs, "input activations")
        dynamic = bool(inputs.get("dynamic"))
        if inputs.get("strategy") not in CT_INPUT_STRATEGIES[dynamic]:
            raise ValueError(f"compressed-tensors: FP8 input activations of strategy "
                             f"{inputs.get('strategy')!r} (dynamic={dynamic}) are not "
                             "supported; supported: static tensor, dynamic tensor/token/group")
        static_input = not dynamic
    block = _block(weights)
    return QuantScheme(
        f"compressed-tensors fp8 ({strategy}{' ' + str(list(block)) if block else ''}, "
        f"{'static' if static_input else 'dynamic'} activations)",
        _chooser(lambda: Fp8LinearMethod(strategy, block, static_input=static_input),
                 list(quant_config.get("ignore") or [])))


@register_checkpoint_format("fp8")
def fp8_checkpoint(quant_config: dict) -> QuantScheme:
    scheme = quant_config.get("activation_scheme", "dynamic")
    if scheme not in ("dynamic", "static"):
        raise ValueError(f"fp8: activation_scheme {scheme!r} is not supported; supported: "
                         "dynamic, static")
    if quant_config.get("fmt", "e4m3") != "e4m3":
        raise ValueError(f"fp8: fmt {quant_config['fmt']!r} is not supported; supported: e4m3")
    ignore = list(quant_config.get("modules_to_not_convert") or
                  quant_config.get("ignored_layers") or [])
    block = quant_config.get("weight_block_size")
    if block is None:
        return QuantScheme(f"fp8 (per-tensor, {scheme} activations)", _chooser(
            lambda: Fp8LinearMethod("tensor", static_input=scheme == "static"), ignore))
    if not (isinstance(block, (list, tuple)) and len(block) == 2
            and all(isinstance(v, int) and v > 0 for v in block)):
        raise ValueError(f"fp8: weight_block_size {block!r} is not two positive integers")
    if scheme != "dynamic":
        raise ValueError("fp8: block-wise weights (weight_block_size) need activation_scheme "
                         "dynamic")
    bn, bk = int(block[0]), int(block[1])
    return QuantScheme(f"fp8 (blocks [{bn}, {bk}], dynamic activations)", _chooser(
        lambda: Fp8LinearMethod("block", (bn, bk), scale_name="weight_scale_inv"), ignore))


@register_online("fp8")
def online_fp8() -> QuantScheme:
    return QuantScheme("fp8 (per-channel, quantized at load)",
                       _chooser(lambda: Fp8LinearMethod("channel", online=True), []),
                       quantizes_dense=True)
