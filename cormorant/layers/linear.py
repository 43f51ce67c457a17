"""Linear layers shaped for tensor parallelism, with the weight format behind a method object.

Column-parallel layers split their output features across ranks, row-parallel layers split
their input features and sum the partial results; with a world size of 1 (the default) both
are plain linears. Each layer's `weight_loader(param, tensor[, shard_id])` copies
a full checkpoint tensor into this rank's part of one of its parameters; fused projections
(QKV, gate_up) take each checkpoint shard ("q"/"k"/"v", or 0/1) into its slice.

A layer owns no weight format: a LinearMethod creates its parameters, fills their rows from
checkpoint tensors (`load_rows`: a float tensor, or a format of its own such as GGUF blocks),
packs them once loaded (`finalize`) and does the matmul. DenseLinearMethod is the default;
other formats are methods in their own modules (layers.gguf_linear: int4/int8 on the CPU),
chosen per layer at build time: `apply_linear_methods(model, choose)` asks `choose(name,
layer)` (a LinearMethodChooser) for each linear layer and swaps the method of those it
answers for, before any weight is loaded; `finalize_linear_methods(model)` runs after.
Parameters are created uninitialised (torch.empty): the loader fills every one of them.
A format with more parameters than `weight` (scales, zero points, packed codes) tags each with
its layout (`set_layout`: which dim holds the output features, which the input features, how
many values one element packs along which dim; none for a per-projection scalar), and the
layer loads them generically (`LinearMethod.load_param`): the tensor-parallel split along
the right dim, then the fused projection's slice along the output dim (a scalar per
projection lands in its slot of a [num_shards] parameter).

Decode-sized inputs (`decode_gemv_kernels`: at most DECODE_MAX_ROWS rows, bf16/fp16, CUDA)
run the skinny GEMM of cormorant.kernels.gemv instead of cuBLAS, which reads these weights
closer to the memory bandwidth (benchmarks/RESULTS.md). A layer's input may also be deferred:
a NormedInput (layers.norm) or a SiluMulInput (layers.activation). Where the layer's method
offers the fused prologue paths for it (`offers_fused_prologue`; the dense method does where
the skinny GEMM runs) the residual add + RMSNorm or the SiLU-and-multiply is computed by the
GEMV as it reads its input, one launch instead of two; otherwise the deferred op runs unfused
first. A quantized method takes part by implementing the same three methods.
Imports: torch, cormorant.layers (parallel, norm, activation), cormorant.kernels (lazily).
"""
from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cormorant.kernels import load as load_kernels
from cormorant.layers.activation import SiluMulInput
from cormorant.layers.norm import NormedInput, RMSNorm
from cormorant.layers.parallel import all_reduce, kv_head_shard, tp_rank_and_size

# What a linear layer's forward accepts: a tensor, or an op left for its matmul to fold in.
LinearInput = torch.Tensor | NormedInput | SiluMulInput

# Rows up to which a projection runs the skinny GEMM. Measured on an H100
# (benchmarks/gemv_probe.py, RESULTS.md): at 1 row it beats cuBLAS on every projection of
# Qwen3-0.6B and Llama-3.1-8B; at 2 and 4 rows it is no faster, so those stay on cuBLAS.
DECODE_MAX_ROWS = 1
# Where it runs. fp32 stays on cuBLAS: its results are the parity reference. (Tests widen
# these to run the kernels on the CPU under TRITON_INTERPRET.)
GEMV_DEVICE_TYPES = ("cuda",)
GEMV_DTYPES = (torch.bfloat16, torch.float16)


def decode_gemv_kernels(x: torch.Tensor, weight: torch.Tensor) -> ModuleType | None:
    """The dispatch rule, in one place: kernels.gemv for a decode-sized input x [M, K]
    (1 <= M <= DECODE_MAX_ROWS) on CUDA in bf16/fp16 with a weight of the same dtype, else
    None (F.linear)."""
    if not (x.device.type in GEMV_DEVICE_TYPES and x.dim() == 2
            and 1 <= x.shape[0] <= DECODE_MAX_ROWS
            and x.dtype in GEMV_DTYPES and weight.dtype == x.dtype
            and x.stride(1) == 1 and weight.stride(1) == 1):
        return None
    return load_kernels("gemv")


def set_layout(param: nn.Parameter, *, output_dim: int | None = 0, input_dim: int | None = 1,
               packed_dim: int | None = None, packed_factor: int = 1) -> nn.Parameter:
    """Tag a method's parameter with its layout for loading (see the module docstring).
    output_dim/input_dim: the dims indexed by output/input features (None: not split along
    them; both None: one value per fused projection, in a [num_shards] parameter);
    packed_dim/packed_factor: `packed_factor` values share one element along `packed_dim`
    (e.g. eight int4 codes in an int32); a grouped scale needs no factor (its dim simply
    has input/group entries). Returns param."""
    param.output_dim, param.input_dim = output_dim, input_dim
    param.packed_dim, param.packed_factor = packed_dim, packed_factor
    return param


def _dims(param: nn.Parameter) -> tuple[int | None, int | None]:
    """(output_dim, input_dim) of a parameter; an untagged one is a dense [out, in] weight."""
    return getattr(param, "output_dim", 0), getattr(param, "input_dim", 1)


def _units(param: nn.Parameter, dim: int) -> int:
    """How many features one element along `dim` stands for (the packing factor)."""
    return param.packed_factor if getattr(param, "packed_dim", None) == dim else 1


class LinearMethod:
    """A weight format: creates a layer's parameters and multiplies by them. Formats
    implement create_weights and apply; one with a fused decode GEMV also answers
    offers_fused_prologue and implements apply_add_norm and apply_silu_mul."""

    def create_weights(self, layer: nn.Module, input_size: int, output_size: int) -> None:
        """Register the layer's weight parameter(s) for this rank's [output, input] slice."""
        raise NotImplementedError

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None
              ) -> torch.Tensor:
        """x [..., input] -> [..., output]."""
        raise NotImplementedError

    def load_rows(self, layer: nn.Module, loaded: Any, start: int) -> None:
        """Write a checkpoint tensor (already this rank's part) into output rows
        start:start + len(loaded) of the layer's weight. The default: a dense copy (a tensor
        of another format is asked to `dequantize()` first)."""
        if not isinstance(loaded, torch.Tensor):
            loaded = loaded.dequantize()
        _copy_checked(layer.weight.data.narrow(0, start, loaded.shape[0]), loaded)

    def load_param(self, layer: nn.Module, param: nn.Parameter, loaded: torch.Tensor,
                   start: int, shard_index: int) -> None:
        """Write a checkpoint tensor (already this rank's part) into one of the method's
        parameters other than `weight`: output features start:start + n along the param's
        output_dim (`set_layout`), or, for a param with neither dim, slot `shard_index` (the
        fused projection's index: q/k/v 0/1/2, gate/up 0/1; 0 when not fused)."""
        out_dim, in_dim = _dims(param)
        if out_dim is None and in_dim is None:
            _copy_checked(param.data.narrow(0, shard_index, 1), loaded.reshape(1))
            return
        if out_dim is None:
            _copy_checked(param.data, loaded)
            return
        units = _units(param, out_dim)
        if start % units or loaded.shape[out_dim] * units + start > param.shape[out_dim] * units:
            raise ValueError(f"checkpoint tensor of shape {tuple(loaded.shape)} does not fit "
                             f"parameter {tuple(param.shape)} at output feature {start}")
        _copy_checked(param.data.narrow(out_dim, start // units, loaded.shape[out_dim]), loaded)

    def finalize(self, layer: nn.Module) -> None:
        """Once every row is loaded: repack for the kernel (nothing to do for dense)."""

    def offers_fused_prologue(self, layer: nn.Module, x: torch.Tensor) -> bool:
        """Whether apply_add_norm / apply_silu_mul may run for input rows x ([M, input] or the
        packed [M, 2 * input] gate_up). False (the default): the layer computes the deferred
        norm or activation unfused and calls apply."""
        return False

    def apply_add_norm(self, layer: nn.Module, hidden: torch.Tensor,
                       residual: torch.Tensor | None, norm: RMSNorm, bias: torch.Tensor | None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """(RMSNorm(hidden + residual) @ W^T (+ bias), hidden + residual) in one pass; with
        residual None, (RMSNorm(hidden) @ W^T (+ bias), hidden). norm: the RMSNorm layer
        (its weight and eps). Inputs are not modified."""
        raise NotImplementedError

    def apply_silu_mul(self, layer: nn.Module, gate_up: torch.Tensor,
                       bias: torch.Tensor | None) -> torch.Tensor:
        """(silu(gate) * up) @ W^T (+ bias) for gate_up [M, 2 * input] = cat(gate, up)."""
        raise NotImplementedError


class DenseLinearMethod(LinearMethod):
    """An unquantized weight in the model dtype."""

    def create_weights(self, layer: nn.Module, input_size: int, output_size: int) -> None:
        weight = torch.empty(output_size, input_size)  # [out, in]
        layer.weight = nn.Parameter(weight, requires_grad=False)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None
              ) -> torch.Tensor:
        kernels = decode_gemv_kernels(x, layer.weight)
        if kernels is not None:
            return kernels.skinny_gemm(x, layer.weight, bias)
        return F.linear(x, layer.weight, bias)

    def offers_fused_prologue(self, layer: nn.Module, x: torch.Tensor) -> bool:
        return decode_gemv_kernels(x, layer.weight) is not None

    def apply_add_norm(self, layer: nn.Module, hidden: torch.Tensor,
                       residual: torch.Tensor | None, norm: RMSNorm, bias: torch.Tensor | None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        return load_kernels("gemv").add_rms_norm_gemm(hidden, residual, norm.weight, norm.eps,
                                                      layer.weight, bias)

    def apply_silu_mul(self, layer: nn.Module, gate_up: torch.Tensor,
                       bias: torch.Tensor | None) -> torch.Tensor:
        return load_kernels("gemv").silu_mul_gemm(gate_up, layer.weight, bias)


class LinearBase(nn.Module):
    """Holds this rank's slice; `tp_dim` is the weight dim split across ranks (0 for
    column-parallel, 1 for row-parallel)."""

    tp_dim: int = 0

    def __init__(self, input_size: int, output_size: int, bias: bool,
                 method: LinearMethod | None = None) -> None:
        super().__init__()
        self.tp_rank, self.tp_size = tp_rank_and_size()
        self.input_size = input_size
        self.output_size = output_size
        self.method = method or DenseLinearMethod()
        self.method.create_weights(self, self._local_in(), self._local_out())
        self.bias = None
        if bias:
            # Column-parallel biases are split like the outputs; row-parallel ones are whole.
            size = self._local_out()
            self.bias = nn.Parameter(torch.empty(size), requires_grad=False)  # [out]

    def _local_in(self) -> int:
        return self.input_size // self.tp_size if self.tp_dim == 1 else self.input_size

    def _local_out(self) -> int:
        return self.output_size // self.tp_size if self.tp_dim == 0 else self.output_size

    def _shard(self, loaded: Any, dim: int | None) -> Any:
        """This rank's part of a full checkpoint tensor along `dim` (None: whole on every
        rank; a tensor of another format that cannot split along `dim` is dequantized
        first)."""
        if self.tp_size == 1 or dim is None:
            return loaded
        if dim != 0 and not isinstance(loaded, torch.Tensor):
            loaded = loaded.dequantize()
        return loaded.chunk(self.tp_size, dim)[self.tp_rank]

    def _split_dim(self, param: nn.Parameter) -> int | None:
        """The dim of `param` split across ranks: output features for column-parallel,
        input features for row-parallel (a row-parallel bias is whole)."""
        if param is self.bias:
            return 0 if self.tp_dim == 0 else None
        out_dim, in_dim = _dims(param)
        return out_dim if self.tp_dim == 0 else in_dim

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        loaded = self._shard(loaded, self._split_dim(param))
        out_dim = 0 if param is self.bias else _dims(param)[0]
        if out_dim is not None and loaded.shape[out_dim] != param.shape[out_dim]:
            raise ValueError(f"checkpoint tensor of shape {tuple(loaded.shape)} does not fit "
                             f"parameter slice of shape {tuple(param.shape)}")
        self._load_rows(param, loaded, 0, 0)

    def _load_rows(self, param: nn.Parameter, loaded: Any, start: int, shard_index: int
                   ) -> None:
        """The weight goes through the method (its format), and so do the method's other
        parameters; a bias is always dense."""
        if param is self.bias:
            _copy_checked(param.data.narrow(0, start, loaded.shape[0]), loaded)
        elif param is getattr(self, "weight", None) and not hasattr(param, "output_dim"):
            self.method.load_rows(self, loaded, start)
        else:
            self.method.load_param(self, param, loaded, start, shard_index)

    def set_method(self, method: LinearMethod) -> None:
        """Swap the weight format before loading: the new method's parameters replace the
        old ones (created with torch.empty, so the old never touched memory), on the device
        the old ones were on."""
        device = next(self.parameters(recurse=False), torch.empty(0)).device
        for name, param in list(self.named_parameters(recurse=False)):
            if param is not self.bias:
                delattr(self, name)
        self.method = method
        with torch.device(device):
            method.create_weights(self, self._local_in(), self._local_out())

    def forward(self, x: LinearInput) -> torch.Tensor:
        return self._project(x, self.bias)

    def _project(self, x: LinearInput, bias: torch.Tensor | None) -> torch.Tensor:
        """This rank's x @ W^T (+ bias). A deferred input is folded into the matmul where the
        method offers that for it, else computed unfused first."""
        method = self.method
        if isinstance(x, NormedInput):
            if x.is_pending and method.offers_fused_prologue(self, x.hidden):
                y, total = method.apply_add_norm(self, x.hidden, x.residual_in, x.norm, bias)
                x.folded(total)
                return y
            x = x.tensor()
        elif isinstance(x, SiluMulInput):
            if method.offers_fused_prologue(self, x.gate_up):
                return method.apply_silu_mul(self, x.gate_up, bias)
            x = x.tensor()
        return method.apply(self, x, bias)


class ColumnParallelLinear(LinearBase):
    tp_dim = 0

    def _load_shard(self, param: nn.Parameter, loaded: Any, offset: int, size: int,
                    shard_index: int) -> None:
        """One projection of a fused layer: exactly output features offset:offset + size
        (a per-projection scalar goes to slot shard_index)."""
        out_dim = 0 if param is self.bias else _dims(param)[0]
        if out_dim is not None and loaded.shape[out_dim] * _units(param, out_dim) != size:
            raise ValueError(f"checkpoint tensor of shape {tuple(loaded.shape)} does not fit "
                             f"{size} output features of parameter {tuple(param.shape)}")
        self._load_rows(param, loaded, offset, shard_index)


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several projections of the same input, concatenated along the output (gate_up)."""

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = False,
                 method: LinearMethod | None = None) -> None:
        self.output_sizes = list(output_sizes)
        super().__init__(input_size, sum(output_sizes), bias, method)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: int) -> None:
        offset = sum(self.output_sizes[:shard_id]) // self.tp_size
        size = self.output_sizes[shard_id] // self.tp_size
        self._load_shard(param, self._shard(loaded, self._split_dim(param)), offset, size,
                         shard_id)


class QKVParallelLinear(ColumnParallelLinear):
    """q, k and v projections in one matmul; rows ordered [q heads | k heads | v heads].
    Query heads split across ranks; kv heads too, or, when there are fewer of them than
    ranks, each rank holds the one its query heads read (layers.parallel.kv_head_shard)."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int,
                 bias: bool = False, method: LinearMethod | None = None) -> None:
        tp_rank, tp_size = tp_rank_and_size()
        if num_heads % tp_size:
            raise ValueError(f"{num_heads} attention heads do not divide across {tp_size} "
                             f"tensor-parallel ranks")
        self.head_dim = head_dim
        self.num_heads = num_heads // tp_size  # per rank
        first_kv, self.num_kv_heads = kv_head_shard(num_kv_heads, tp_rank, tp_size)
        self.kv_part = (first_kv // self.num_kv_heads, num_kv_heads // self.num_kv_heads)
        output_size = (num_heads + 2 * num_kv_heads) * head_dim
        super().__init__(hidden_size, output_size, bias, method)

    def _local_out(self) -> int:
        return (self.num_heads + 2 * self.num_kv_heads) * self.head_dim

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str) -> None:
        q_size = self.num_heads * self.head_dim
        kv_size = self.num_kv_heads * self.head_dim
        offset, size = {"q": (0, q_size), "k": (q_size, kv_size),
                        "v": (q_size + kv_size, kv_size)}[shard_id]
        self._load_shard(param, self._head_part(loaded, shard_id, self._split_dim(param)), offset,
                         size, "qkv".index(shard_id))

    def _head_part(self, loaded: Any, shard_id: str, dim: int | None) -> Any:
        """This rank's part of checkpoint tensor q, k or v along `dim` (None: whole): its
        query heads, or its group of kv heads (ranks that replicate one read the same)."""
        if dim is None:
            return loaded
        if shard_id == "q":
            return self._shard(loaded, dim)
        index, num_parts = self.kv_part
        return loaded if num_parts == 1 else loaded.chunk(num_parts, dim)[index]


class RowParallelLinear(LinearBase):
    """Input features split across ranks; partial outputs are summed (all-reduce)."""

    tp_dim = 1

    @property
    def rank_bias(self) -> torch.Tensor | None:
        """Only rank 0 adds the bias, so the all-reduce counts it once."""
        return self.bias if self.tp_rank == 0 else None

    def forward(self, x: LinearInput) -> torch.Tensor:
        return all_reduce(self._project(x, self.rank_bias))


# Which method a linear layer gets, by its module name (e.g. "model.layers.0.mlp.down_proj");
# None keeps the one it was built with.
LinearMethodChooser = Callable[[str, LinearBase], LinearMethod | None]


def apply_linear_methods(model: nn.Module, choose: LinearMethodChooser) -> int:
    """Give each linear layer the method `choose` answers for it (before loading); returns how
    many layers changed."""
    changed = 0
    for name, module in model.named_modules():
        if isinstance(module, LinearBase) and (method := choose(name, module)) is not None:
            module.set_method(method)
            changed += 1
    return changed


def finalize_linear_methods(model: nn.Module) -> None:
    """After loading: let every linear layer's method pack its weights for its kernel."""
    for module in model.modules():
        if isinstance(module, LinearBase):
            module.method.finalize(module)


def _copy_checked(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Copy with dtype/device conversion; a shape mismatch means a checkpoint that does not
    match the config, which must fail loudly rather than broadcast."""
    if dst.shape != src.shape:
        raise ValueError(f"checkpoint tensor of shape {tuple(src.shape)} does not fit "
                         f"parameter slice of shape {tuple(dst.shape)}")
    dst.copy_(src)
