"""`lmforge import hf` and `lmforge export hf`: run directories <-> Hugging Face model directories.

Weights are read from safetensors (single or sharded) or from `pytorch_model.bin` through
`torch.load(weights_only=True)` only; arbitrary pickled objects are never loaded.
"""

import json
import logging
import pickle
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from lmforge.config import ModelConfig, RunConfig
from lmforge.data.chat import ChatTemplate
from lmforge.errors import CheckpointError
from lmforge.interop.hf_config import (
    LLAMA_FAMILY,
    config_from_hf,
    config_to_hf,
    export_model_type,
    model_type_of,
)
from lmforge.interop.hf_layout import (
    HF_BIN_INDEX,
    HF_BIN_WEIGHTS,
    HF_CHAT_TEMPLATE,
    HF_CONFIG,
    HF_GENERATION_CONFIG,
    HF_MERGES,
    HF_SPECIAL_TOKENS,
    HF_TOKENIZER,
    HF_TOKENIZER_CONFIG,
    HF_VOCAB_JSON,
    HF_VOCAB_TXT,
    HF_WEIGHTS,
    HF_WEIGHTS_INDEX,
    Rule,
    expected_theirs_shapes,
    full_name,
    normalise_names,
    rules_for,
    tensor_to_ours,
    tensor_to_theirs,
)
from lmforge.interop.hf_tokenizer import import_tokenizer, special_token_ids, tokenizer_configs
from lmforge.rundir import checkpoint as ckpt
from lmforge.rundir import layout
from lmforge.rundir.adapters import is_adapter_run
from lmforge.rundir.files import staged_directory, write_text_atomic
from lmforge.rundir.load import (
    build_model,
    check_vocab,
    load_run,
    read_chat_template,
    write_chat_template,
)

log = logging.getLogger(__name__)
HUB_FILES = [
    HF_CONFIG,
    HF_GENERATION_CONFIG,
    "tokenizer*",
    HF_SPECIAL_TOKENS,
    HF_VOCAB_JSON,
    HF_VOCAB_TXT,
    HF_MERGES,
    "*.safetensors",
    "*.safetensors.index.json",
]


# ---------------------------------------------------------------- reading their files


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(
            f"{path.parent} has no {path.name}; is it a save_pretrained directory?"
        ) from None
    except (OSError, ValueError, RecursionError) as exc:  # bad UTF-8 and JSON are ValueErrors
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def _shard_files(src: Path, index_name: str) -> list[Path]:
    """The files named by a sharded checkpoint's index, each checked to sit inside src."""
    weight_map = _read_json(src / index_name).get("weight_map", {})
    files = []
    for name in sorted(set(weight_map.values())):
        path = (src / name).resolve()
        if path.parent != src.resolve():
            raise CheckpointError(f"{src / index_name} points outside its directory: {name}")
        files.append(path)
    return files


class CheckpointTensors(Mapping[str, torch.Tensor]):
    """The tensors of a Hugging Face checkpoint, read one at a time (float32 where floating
    point) from its safetensors files, so importing never holds the whole checkpoint twice."""

    def __init__(self, files: list[Path]) -> None:
        self._where: dict[str, Path] = {}
        for path in files:
            try:
                with safe_open(str(path), framework="pt") as handle:
                    self._where.update(dict.fromkeys(handle.keys(), path))
            except (SafetensorError, OSError) as exc:
                raise CheckpointError(f"{path} is truncated or corrupt ({exc})") from None

    def __getitem__(self, name: str) -> torch.Tensor:
        path = self._where[name]
        try:
            with safe_open(str(path), framework="pt") as handle:
                tensor = handle.get_tensor(name)
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path} is truncated or corrupt ({exc})") from None
        return tensor.float() if tensor.is_floating_point() else tensor

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    """A pytorch_model.bin through weights_only=True: tensors and plain containers only."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} does not load with torch.load(weights_only=True) ({first_line}); lmforge "
            "never unpickles arbitrary objects. Re-save it as safetensors with a tool you trust"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise CheckpointError(f"{path} does not hold a flat name -> tensor state dict")
    return {n: t.float() if t.is_floating_point() else t for n, t in state.items()}


def read_hf_weights(src: Path) -> Mapping[str, torch.Tensor]:
    """Every tensor of a Hugging Face model directory, in float32 where it is floating point:
    safetensors (one file or sharded) read lazily, tensor by tensor; pytorch_model.bin whole."""
    if (src / HF_WEIGHTS).is_file():
        return CheckpointTensors([src / HF_WEIGHTS])
    if (src / HF_WEIGHTS_INDEX).is_file():
        return CheckpointTensors(_shard_files(src, HF_WEIGHTS_INDEX))
    if (src / HF_BIN_WEIGHTS).is_file():
        files = [src / HF_BIN_WEIGHTS]
    elif (src / HF_BIN_INDEX).is_file():
        files = _shard_files(src, HF_BIN_INDEX)
    else:
        raise CheckpointError(
            f"{src} has no weights: expected {HF_WEIGHTS} (or a sharded index) or {HF_BIN_WEIGHTS}"
        )
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        tensors.update(_load_bin(path))
    return tensors


def resolve_source(source: str) -> Path:
    """A local save_pretrained directory, or a Hub repository id downloaded when online."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise CheckpointError(f"{source} is not a directory holding a Hugging Face model")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(
            f"{source!r} is not a local directory, and downloading from the Hub needs the "
            "huggingface_hub package (pip install huggingface_hub)"
        ) from None
    try:
        local = Path(snapshot_download(repo_id=source, allow_patterns=HUB_FILES))
        if not any(local.glob("*.safetensors")):
            local = Path(snapshot_download(repo_id=source, allow_patterns=["pytorch_model*"]))
    except Exception as exc:  # offline, unknown repository, gated model, ...
        raise CheckpointError(
            f"cannot download {source!r} from the Hugging Face Hub ({type(exc).__name__}: {exc}); "
            "offline, pass a local save_pretrained directory instead"
        ) from None
    return local


# ---------------------------------------------------------------- import


def _load_into(
    model: nn.Module,
    theirs: Mapping[str, torch.Tensor],
    names: dict[str, str],
    cfg: ModelConfig,
    model_type: str,
) -> None:
    """Copy their tensors into our model rule by rule (one rule's tensors in memory at a time),
    naming any missing tensor or shape mismatch."""
    ours, missing = model.state_dict(), []  # views of the parameters: copy_ writes into them
    rules = rules_for(model_type, cfg)
    for rule in rules:
        if not all(name in names for name in rule.theirs):
            missing.append(rule)
            continue
        wanted = expected_theirs_shapes(rule, ours[rule.ours].shape, cfg)
        parts = [theirs[names[name]] for name in rule.theirs]
        for name, part, shape in zip(rule.theirs, parts, wanted, strict=True):
            if tuple(part.shape) != shape:
                raise CheckpointError(
                    f"tensor {full_name(name, model_type)} has shape {tuple(part.shape)}, "
                    f"but config.json implies {shape}"
                )
        with torch.no_grad():
            ours[rule.ours].copy_(tensor_to_ours(rule, parts, cfg))
    _report_missing(missing, model_type)
    used = {name for rule in rules for name in rule.theirs}
    if cfg.tie_weights:  # the head is the token embedding; a copy of it may be in the file
        used |= {"^lm_head.weight", "^embed_out.weight"}
    extra = sorted(full_name(n, model_type) for n in set(names) - used)
    if extra:
        raise CheckpointError(
            f"the checkpoint holds {len(extra)} tensors its config.json does not describe, "
            f"e.g. {extra[:4]}; is config.json the one saved with these weights?"
        )


def _report_missing(missing: list[Rule], model_type: str) -> None:
    heads = [r for r in missing if r.ours.startswith(("pooler", "mlm_", "nsp_head"))]
    body = [r for r in missing if r not in heads]
    if body:
        names = [full_name(n, model_type) for r in body for n in r.theirs]
        raise CheckpointError(f"the checkpoint lacks {len(names)} tensors, e.g. {names[:4]}")
    if heads:
        log.warning(
            "the checkpoint has no %s; they keep their random initialisation",
            ", ".join(sorted({r.ours.split(".")[0] for r in heads})),
        )


def model_from_hf(hf_config: dict[str, Any], tensors: Mapping[str, torch.Tensor]) -> nn.Module:
    """Our model holding the weights of a Hugging Face one (its config dict and state dict).

    E.g. `model_from_hf(hf.config.to_dict(), hf.state_dict())` for a loaded transformers model.
    """
    model_type = model_type_of(hf_config)
    cfg = config_from_hf(hf_config)
    model = build_model(RunConfig(model=cfg))
    _load_into(model, tensors, normalise_names(tensors, model_type), cfg, model_type)
    return model.eval()


def import_hf(source: str, out: Path, overwrite: bool = False) -> dict[str, Any]:
    """A Hugging Face GPT-2 / GPT-NeoX / BERT directory (or Hub id) -> an lmforge run directory."""
    src = resolve_source(source)
    hf_config = _read_json(src / HF_CONFIG)
    model_type = model_type_of(hf_config)
    cfg = RunConfig(model=config_from_hf(hf_config))
    tokenizer = import_tokenizer(src, model_type)
    check_vocab(tokenizer, cfg, str(src))
    model = model_from_hf(hf_config, read_hf_weights(src))
    template = read_hf_chat_template(src)
    with staged_directory(out, overwrite) as tmp:
        ckpt.write_run_files(tmp, cfg, tokenizer)
        ckpt.save_weights(model, tmp / layout.MODEL_FILE)
        if template is not None:
            write_chat_template(tmp, template)
    log.info("imported %s (%s) into %s", source, model_type, out)
    summary = {"out": str(out), "architecture": model_type, "params": model.num_params()}
    return {**summary, "chat_template": template is not None}


def _token_text(value: Any) -> str:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return value if isinstance(value, str) else ""


def read_hf_chat_template(src: Path) -> ChatTemplate | None:
    """A Hugging Face directory's chat template — chat_template.jinja, else the chat_template
    key of tokenizer_config.json (a string, or named templates of which "default") — with the
    bos/eos tokens it may name; None for a model without one."""
    settings = (
        _read_json(src / HF_TOKENIZER_CONFIG) if (src / HF_TOKENIZER_CONFIG).is_file() else {}
    )
    if (src / HF_CHAT_TEMPLATE).is_file():
        source = (src / HF_CHAT_TEMPLATE).read_text(encoding="utf-8")
    else:
        source = settings.get("chat_template")
        if isinstance(source, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
            source = named.get("default")
    if not isinstance(source, str) or not source:
        return None
    bos, eos = _token_text(settings.get("bos_token")), _token_text(settings.get("eos_token"))
    return ChatTemplate(source, bos, eos)


# ---------------------------------------------------------------- export


def _twin_shapes(cfg: ModelConfig) -> tuple[ModelConfig, dict[str, torch.Size]]:
    """The config of the Hugging Face twin (biases and segment embeddings always present)."""
    if export_model_type(cfg) in LLAMA_FAMILY:  # holds our biases, or their absence, as they are
        twin = cfg
    else:
        twin = replace(cfg, bias=True, type_vocab_size=max(cfg.type_vocab_size, 1))
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in build_model(RunConfig(model=twin)).state_dict().items()}
    return twin, shapes


def _convert_to_theirs(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Their state dict; tensors our model lacks (biases, segment embeddings) exported as zeros."""
    model_type = export_model_type(cfg)
    twin, shapes = _twin_shapes(cfg)
    theirs = {}
    for rule in rules_for(model_type, twin):
        tensor = state.get(rule.ours)
        if tensor is None:
            tensor = torch.zeros(shapes[rule.ours])
        for name, part in zip(rule.theirs, tensor_to_theirs(rule, tensor, twin), strict=True):
            theirs[full_name(name, model_type)] = part.contiguous()
    return theirs


def write_hf_model(run_dir: Path, directory: Path, chat_run: Path | None = None) -> dict[str, Any]:
    """Write a (non-adapter) run's model, config and tokenizer files into an existing directory;
    the chat template (chat_template.jinja, and the tokenizer_config.json key older readers
    use) comes from chat_run (an adapter run over this base), else from the run itself."""
    cfg, model, tokenizer = load_run(run_dir)
    model_type = export_model_type(cfg.model)
    theirs = _convert_to_theirs(ckpt.clean_state_dict(model), cfg.model)
    ids = special_token_ids(tokenizer)
    generation = {f"{k}_token_id": v for k, v in ids.items()}
    if "eos" in ids:
        generation["pad_token_id"] = ids["eos"]
    write_text_atomic(directory / HF_CONFIG, json.dumps(config_to_hf(cfg.model, ids), indent=2))
    save_file(theirs, str(directory / HF_WEIGHTS), metadata={"format": "pt"})
    tokenizer.save(directory / HF_TOKENIZER)
    configs = tokenizer_configs(tokenizer, cfg.model.block_size)
    template = read_chat_template(chat_run or run_dir, tokenizer)
    if template is not None:
        write_text_atomic(directory / HF_CHAT_TEMPLATE, template.source)
        tokens = {"bos_token": template.bos_token, "eos_token": template.eos_token}
        for name in (HF_TOKENIZER_CONFIG, HF_SPECIAL_TOKENS):  # the template's bos / eos
            configs[name] |= {k: v for k, v in tokens.items() if v}
        configs[HF_TOKENIZER_CONFIG]["chat_template"] = template.source
    for name, content in configs.items():
        write_text_atomic(directory / name, json.dumps(content, indent=2))
    if cfg.model.arch == "gpt":
        write_text_atomic(directory / HF_GENERATION_CONFIG, json.dumps(generation, indent=2))
    return {"architecture": model_type, "params": model.num_params()}


def export_hf(run_dir: Path, out: Path, overwrite: bool = False) -> dict[str, Any]:
    """An lmforge run directory -> a directory `transformers` loads with from_pretrained offline.

    An adapter run is exported by interop/peft.py (its base through this module, its un-merged
    LoRA as a PEFT adapter); `lmforge export hf` picks the right one.
    """
    if is_adapter_run(Path(run_dir)):
        raise CheckpointError(
            f"{run_dir} is a LoRA adapter run: export it with `lmforge export hf` "
            "(interop.peft.export_peft_adapter), which writes its base and a PEFT adapter"
        )
    with staged_directory(out, overwrite) as tmp:
        summary = write_hf_model(Path(run_dir), tmp)
    log.info("exported %s as %s into %s", run_dir, summary["architecture"], out)
    return {"out": str(out), **summary}
