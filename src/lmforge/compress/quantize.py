"""Int8 weights: dynamic quantization of every nn.Linear, stored as int8 + per-channel scales.

Dynamic quantization (PyTorch's `quantize_dynamic`) keeps int8 weights, w ≈ s_o · q_o,i with
one scale s_o = max_i |w_o,i| / 127 per output channel, and quantizes each activation batch
on the fly, so matrix products run in int8 and read a quarter of the bytes. Where this build has
no quantized CPU engine (or the model is not on the CPU), weight-only int8 takes its place:
the same int8 tensors, multiplied back to fp32 at each call (4x smaller, not faster).

A head tied to the token embedding (GPT-2, the demo model) is quantized once: one scale per
output channel of the head is one scale per row of the embedding, so the embedding looks its rows
up in the same int8 table (`Int8Embedding`) instead of keeping a float copy beside it.

On disk a quantized run holds `model.int8.safetensors` (for each linear layer `NAME.weight`
int8 and `NAME.weight_scale` float32, every other tensor as it was; a tied embedding is not
stored again) and `quantization.json`; it has no model.safetensors, so nothing mistakes it for a
float checkpoint.
"""

import copy
import json
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

from lmforge.errors import CheckpointError
from lmforge.rundir.layout import QUANTIZATION_FILE, QUANTIZED_WEIGHTS

SCHEMES = ("int8-dynamic", "int8-weight-only")


class WeightOnlyInt8Linear(nn.Module):
    """y = x · (s ⊙ q)ᵀ + b with int8 q and a float scale per output channel."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.register_buffer("weight_int8", q)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_int8.to(x.dtype) * self.weight_scale.to(x.dtype)[:, None]
        return F.linear(x, weight, self.bias)


class DequantizedInt8Linear(WeightOnlyInt8Linear):
    """A small int8 layer of a dynamic-int8 model: stored as int8, run in fp32 from a copy
    dequantized once. PyTorch's dynamic int8 kernel costs ~15 us a call whatever the size,
    while a 128x384 fp32 product with one row takes ~4 us: below DYNAMIC_MIN_ELEMENTS int8
    would make decoding slower (docs/benchmarks.md)."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__(q, scale, bias)
        self.register_buffer("weight", q.float() * scale.float()[:, None], persistent=False)
        self.packable = True  # model.packed may run it on oneDNN's packed copy, as nn.Linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype), self.bias)


class Int8Embedding(nn.Module):
    """Embedding rows e_i = s_i · q_i from the int8 table of the head it is tied to.

    The buffers are not persistent: the file stores the table once, under the head's name.
    """

    def __init__(self, q: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight_int8", q, persistent=False)
        self.register_buffer("weight_scale", scale, persistent=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.weight_int8[idx].float() * self.weight_scale[idx, None]


DYNAMIC_MIN_ELEMENTS = 1 << 18  # from 512x512 up the int8 kernel is as fast or faster


def int8_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one scale per row: q = round(w / s), s = max|w_row| / 127."""
    scale = weight.detach().abs().amax(dim=1).float().clamp(min=1e-12) / 127
    q = torch.round(weight.detach().float() / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def dynamic_supported(model: nn.Module) -> bool:
    """Whether PyTorch's dynamic int8 kernels can run this model (CPU, a quantized engine)."""
    engines = set(torch.backends.quantized.supported_engines) - {"none"}
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    return bool(engines) and on_cpu


def _linear_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def tied_embeddings(model: nn.Module) -> dict[str, str]:
    """{linear layer name: embedding name} for every nn.Linear sharing its weight with an
    nn.Embedding (a tied LM head)."""
    embeddings = {
        id(m.weight): name for name, m in model.named_modules() if isinstance(m, nn.Embedding)
    }
    return {
        name: embeddings[id(m.weight)]
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and id(m.weight) in embeddings
    }


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _dynamic_linear(q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """PyTorch's dynamic int8 Linear holding exactly these int8 values and scales (a
    DequantizedInt8Linear for a layer too small for the int8 kernel to pay off)."""
    if q.numel() < DYNAMIC_MIN_ELEMENTS:
        return DequantizedInt8Linear(q, scale, bias)
    out_features, in_features = q.shape
    zeros = torch.zeros(out_features, dtype=torch.long)
    with warnings.catch_warnings():  # quantized-tensor creation is marked deprecated in 2.10+
        warnings.simplefilter("ignore")
        module = DynamicLinear(in_features, out_features, bias_=bias is not None, dtype=torch.qint8)
        packed = torch.quantize_per_channel(
            q.float() * scale[:, None], scale.double(), zeros, 0, torch.qint8
        )
        module.set_weight_bias(packed, None if bias is None else bias.detach().float())
    return module


def quantize_int8(model: nn.Module, scheme: str = "auto") -> tuple[nn.Module, str]:
    """A quantized copy of model (every nn.Linear int8) and the scheme used.

    scheme: int8-dynamic, int8-weight-only, or auto (dynamic where supported).
    """
    if scheme == "auto":
        scheme = "int8-dynamic" if dynamic_supported(model) else "int8-weight-only"
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}; use one of {SCHEMES}")
    quantized = copy.deepcopy(model).eval()
    tied = tied_embeddings(quantized)
    for name in _linear_names(quantized):
        linear = quantized.get_submodule(name)
        q, scale = int8_per_channel(linear.weight)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        build = _dynamic_linear if scheme == "int8-dynamic" else WeightOnlyInt8Linear
        _replace(quantized, name, build(q, scale, bias))
        if name in tied:
            _replace(quantized, tied[name], Int8Embedding(q, scale))
    return quantized, scheme


def int8_parts(
    module: nn.Module,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
    """(int8 weight, scales, bias) of a quantized linear layer; None for any other module."""
    if isinstance(module, WeightOnlyInt8Linear):
        return module.weight_int8, module.weight_scale, module.bias
    if isinstance(module, DynamicLinear):
        weight, bias = module._weight_bias()
        return weight.int_repr(), weight.q_per_channel_scales().float(), bias
    return None


def int8_tensors(quantized: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of a quantized model for safetensors: int8 weights, scales, the rest as is."""
    tensors: dict[str, torch.Tensor] = {}
    prefixes = []
    for name, module in quantized.named_modules():
        parts = int8_parts(module)
        if parts is None:
            continue
        q, scale, bias = parts
        prefixes.append(name + ".")
        tensors[f"{name}.weight"], tensors[f"{name}.weight_scale"] = q, scale
        if bias is not None:
            tensors[f"{name}.bias"] = bias.detach().float()
    for name, tensor in quantized.state_dict().items():
        if not name.startswith(tuple(prefixes)) and isinstance(tensor, torch.Tensor):
            tensors.setdefault(name, tensor)
    return {name: t.contiguous() for name, t in tensors.items()}


def load_int8(float_model: nn.Module, tensors: dict[str, torch.Tensor], scheme: str) -> nn.Module:
    """Rebuild the quantized model saved by int8_tensors onto a float model of the same config."""
    if scheme == "int8-dynamic" and not dynamic_supported(float_model):
        scheme = "int8-weight-only"  # the same int8 values through portable kernels
    build = _dynamic_linear if scheme == "int8-dynamic" else WeightOnlyInt8Linear
    tensors = dict(tensors)
    tied = tied_embeddings(float_model)
    try:
        for name in _linear_names(float_model):
            q, scale = tensors.pop(f"{name}.weight"), tensors.pop(f"{name}.weight_scale")
            _replace(float_model, name, build(q, scale, tensors.pop(f"{name}.bias", None)))
            if name in tied and f"{tied[name]}.weight" not in tensors:  # else: an older file
                _replace(float_model, tied[name], Int8Embedding(q, scale))
    except KeyError as exc:
        raise CheckpointError(
            f"quantized weights lack {exc.args[0]}; re-run compress quantize"
        ) from None
    prefixes = tuple(name + "." for name in quantized_layers(float_model))
    expected = {k for k in float_model.state_dict() if not k.startswith(prefixes)}
    if set(tensors) != expected:
        raise CheckpointError(
            f"quantized weights do not fit the model: missing {sorted(expected - set(tensors))}, "
            f"unexpected {sorted(set(tensors) - expected)}; re-run compress quantize"
        )
    with torch.no_grad():  # copied one by one: the int8 modules load their own way
        for name, tensor in tensors.items():
            module_name, _, attr = name.rpartition(".")
            target = getattr(float_model.get_submodule(module_name), attr)
            if target.shape != tensor.shape:
                raise CheckpointError(
                    f"{name}: saved shape {tuple(tensor.shape)}, model {tuple(target.shape)}"
                )
            target.copy_(tensor)
    return float_model.eval()


def load_quantized(run_dir: Path, float_model: nn.Module) -> nn.Module:
    """The int8 model of a quantized run directory, built on a float model of its config."""
    try:
        record = json.loads((run_dir / QUANTIZATION_FILE).read_text(encoding="utf-8"))
        tensors = load_file(str(run_dir / QUANTIZED_WEIGHTS))
    except FileNotFoundError as exc:
        raise CheckpointError(
            f"{run_dir} is a quantized run but lacks {Path(exc.filename).name}"
        ) from None
    except (json.JSONDecodeError, SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{run_dir}: quantized weights are corrupt ({exc})") from None
    scheme = record.get("scheme")
    if scheme not in SCHEMES:
        raise CheckpointError(f"{run_dir}/{QUANTIZATION_FILE}: unknown scheme {scheme!r}")
    return load_int8(float_model, tensors, scheme)


def model_bytes(model: nn.Module) -> int:
    """Bytes of every tensor the model's file holds: parameters and persistent buffers, int8
    layers as int8 values + scales, a tensor shared by several names (tied) once."""
    seen: set[object] = set()
    total = 0
    for tensor in int8_tensors(model).values():
        key = (tensor.data_ptr(), tensor.numel()) if tensor.numel() else id(tensor)
        if key not in seen:
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total


def linear_weight_bytes(model: nn.Module, resident: bool = False) -> int:
    """Bytes of the linear layers' weights as stored (int8 values and their scales once
    quantized); resident: as held in memory, counting dequantized fp32 copies too."""
    total = 0
    for module in model.modules():
        parts = int8_parts(module)
        if parts is not None:
            total += parts[0].numel() + parts[1].numel() * parts[1].element_size()
            if resident and isinstance(module, DequantizedInt8Linear):
                total += module.weight.numel() * module.weight.element_size()
        elif isinstance(module, nn.Linear):
            total += module.weight.numel() * module.weight.element_size()
    return total


def quantized_layers(model: nn.Module) -> list[str]:
    """Names of the int8 linear layers of a model."""
    return [name for name, m in model.named_modules() if int8_parts(m) is not None]
