"""Un-merged LoRA adapters in the PEFT format, beside their base exported for `transformers`.

`export_peft_adapter(adapter_run, out)` writes the base run as `export_hf` does into `out` and
the adapter into `out/adapter/` (`adapter_config.json` + `adapter_model.safetensors`), so that

    base = AutoModelForCausalLM.from_pretrained(out)
    model = PeftModel.from_pretrained(base, out / "adapter")

computes what the lmforge adapter run computes. Both libraries add (α / r) · B A x, with A (r, in)
and B (out, r); the layouts differ only where the base weights differ:

- GPT-2's Conv1D stores W transposed, but PEFT keeps A and B as for nn.Linear
  (`fan_in_fan_out: true` tells it so): A and B are copied.
- BERT splits our fused qkv into query, key and value: one LoRA with A shared and
  B = [B_q; B_k; B_v] is exactly three LoRAs with the same A, so B is split by rows.
- GPT-NeoX interleaves qkv per head and permutes the rotary dimensions: B's rows (the output
  rows of W) take the weight's row permutation, A is copied.
"""

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from lmforge.config import ModelConfig
from lmforge.errors import CheckpointError
from lmforge.interop.hf import write_hf_model
from lmforge.interop.hf_config import LLAMA_FAMILY, export_model_type
from lmforge.interop.hf_layout import (
    PEFT_CONFIG,
    PEFT_DIR,
    PEFT_WEIGHTS,
    Rule,
    full_name,
    rules_for,
    tensor_to_theirs,
)
from lmforge.model.lora import LoRALinear, lora_layers
from lmforge.rundir.adapters import read_adapter_config
from lmforge.rundir.files import staged_directory, write_text_atomic
from lmforge.rundir.load import load_run

PEFT_PREFIX = "base_model.model."  # PeftModel's path to the wrapped transformers model
TASK_TYPES = {  # PEFT task type per architecture (none for BERT pretraining heads)
    "gpt2": "CAUSAL_LM",
    "gpt_neox": "CAUSAL_LM",
    "bert": None,
    **dict.fromkeys(LLAMA_FAMILY, "CAUSAL_LM"),
}


def _weight_rules(model_type: str, cfg: ModelConfig) -> dict[str, Rule]:
    """Weight rules by our module name (`blocks.0.attn.qkv`)."""
    return {
        rule.ours.removesuffix(".weight"): rule
        for rule in rules_for(model_type, cfg)
        if rule.ours.endswith(".weight")
    }


def _their_module(rule_name: str, model_type: str) -> str:
    """`h.0.attn.c_attn.weight` -> `transformer.h.0.attn.c_attn`."""
    return full_name(rule_name, model_type).removesuffix(".weight")


def _lora_parts(
    layer: LoRALinear, rule: Rule, cfg: ModelConfig
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(A, B) for each of their modules that our layer maps to."""
    a, b = layer.lora_A.detach().cpu(), layer.lora_B.detach().cpu()
    # A Conv1D's weight is transposed, its LoRA is not; every other kind reshapes B as W's rows.
    parts = [b] if rule.kind == "transpose" else tensor_to_theirs(rule, b, cfg)
    return [(a.clone().contiguous(), part.contiguous()) for part in parts]


def peft_tensors(
    layers: dict[str, LoRALinear], cfg: ModelConfig
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """PEFT's adapter state dict and the full names of the modules it adapts."""
    model_type = export_model_type(cfg)
    rules = _weight_rules(model_type, cfg)
    tensors: dict[str, torch.Tensor] = {}
    modules: list[str] = []
    for name, layer in layers.items():
        if name not in rules:
            raise CheckpointError(
                f"the adapter wraps {name}, which has no counterpart in {model_type}; export "
                "a merged model instead (`lmforge lora merge`, then `lmforge export hf`)"
            )
        rule = rules[name]
        for theirs, (a, b) in zip(rule.theirs, _lora_parts(layer, rule, cfg), strict=True):
            module = _their_module(theirs, model_type)
            tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = a
            tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = b
            modules.append(module)
    return tensors, modules


def target_modules(modules: list[str], model_type: str, cfg: ModelConfig) -> list[str]:
    """Short suffixes (`attn.c_attn`) where they select exactly `modules`, else full names.

    PEFT adapts every module whose name ends with `.` + a target, so suffixes are only right
    when every block is adapted alike and no other module shares the suffix (BERT's MLP
    `output.dense` would also catch `attention.output.dense`).
    """
    suffixes = sorted({re.sub(r"^.*?\.\d+\.", "", m) for m in modules})
    every = {
        _their_module(n, model_type) for rule in rules_for(model_type, cfg) for n in rule.theirs
    }
    selected = {m for m in every if any(m == s or m.endswith("." + s) for s in suffixes)}
    return suffixes if selected == set(modules) else sorted(modules)


def peft_config(record: dict[str, Any], model_type: str, targets: list[str]) -> dict[str, Any]:
    """PEFT's LoraConfig as JSON; the base model sits one directory up from the adapter."""
    return {
        "peft_type": "LORA",
        "task_type": TASK_TYPES[model_type],
        "base_model_name_or_path": "..",
        "inference_mode": True,
        "r": int(record["r"]),
        "lora_alpha": float(record["alpha"]),
        "lora_dropout": float(record.get("dropout", 0.0)),
        "target_modules": targets,
        "fan_in_fan_out": model_type == "gpt2",  # GPT-2's Conv1D holds W transposed
        "bias": "none",
        "use_rslora": False,  # scaling alpha / r, as lmforge's
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
    }


def export_peft_adapter(run_dir: Path, out: Path, overwrite: bool = False) -> dict[str, Any]:
    """An lmforge adapter run -> its base as a transformers directory + the PEFT adapter."""
    run_dir = Path(run_dir)
    record = read_adapter_config(run_dir)
    if record.get("heads"):
        raise CheckpointError(
            f"{run_dir} trains task heads ({', '.join(record['heads'])}), which PEFT's "
            "adapter format for these models cannot hold; merge it (`lmforge lora merge`) and "
            "use the merged run with lmforge"
        )
    cfg, model, _ = load_run(run_dir)  # checks the base's weights against the adapter
    model_type = export_model_type(cfg.model)
    tensors, modules = peft_tensors(lora_layers(model), cfg.model)
    settings = peft_config(record, model_type, target_modules(modules, model_type, cfg.model))
    with staged_directory(Path(out), overwrite) as tmp:
        summary = write_hf_model(Path(record["base_run"]), tmp, chat_run=run_dir)
        (tmp / PEFT_DIR).mkdir()
        write_text_atomic(tmp / PEFT_DIR / PEFT_CONFIG, json.dumps(settings, indent=2))
        save_file(tensors, str(tmp / PEFT_DIR / PEFT_WEIGHTS), metadata={"format": "pt"})
    return {
        **summary,
        "out": str(out),
        "adapter": str(Path(out) / PEFT_DIR),
        "adapted_modules": len(modules),
    }
