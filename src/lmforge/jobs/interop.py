"""`lmforge import hf` and `lmforge export hf`: run directories to and from Hugging Face."""

from pathlib import Path
from typing import Any

from lmforge.rundir.lock import run_lock


def import_hf(source: str, out: Path, overwrite: bool = False) -> dict[str, Any]:
    """A Hugging Face GPT-2 / GPT-NeoX / BERT (directory or Hub id) -> a run directory."""
    from lmforge.interop import hf  # imported here: only these two verbs need it

    with run_lock(out, "lmforge import hf"):
        return hf.import_hf(source, out, overwrite)


def export_hf(run_dir: Path, out: Path, overwrite: bool = False) -> dict[str, Any]:
    """A run directory -> a directory that transformers' from_pretrained loads; an adapter run
    -> its base there and its LoRA as a PEFT adapter in out/adapter/."""
    from lmforge.interop import hf, peft
    from lmforge.rundir.adapters import is_adapter_run

    with run_lock(out, "lmforge export hf"):
        if is_adapter_run(Path(run_dir)):
            return peft.export_peft_adapter(run_dir, out, overwrite)
        return hf.export_hf(run_dir, out, overwrite)
