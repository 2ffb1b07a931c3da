"""Prompt -> completion pairs from the standard library: a docstring's first line -> the name.

    python examples/sft_pairs.py --out data/sft

Writes train.jsonl and valid.jsonl ({"prompt": "Docstring: <first line>\\nName:",
"completion": " module.function"}), split by a hash of the name so the split is stable.
Everything comes from the running Python: no download.
"""

import argparse
import hashlib
import importlib
import inspect
import json
from pathlib import Path

MODULES = [
    "math",
    "os",
    "os.path",
    "json",
    "re",
    "string",
    "random",
    "statistics",
    "itertools",
    "functools",
    "operator",
    "shutil",
    "glob",
    "fnmatch",
    "textwrap",
    "time",
    "calendar",
    "base64",
    "binascii",
    "zlib",
    "gzip",
    "heapq",
    "bisect",
    "copy",
    "difflib",
    "html",
    "keyword",
    "locale",
    "platform",
    "pprint",
    "secrets",
    "struct",
    "tempfile",
    "unicodedata",
    "uuid",
]


def pairs() -> list[dict[str, str]]:
    found = {}
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name, obj in vars(module).items():
            if name.startswith("_") or not callable(obj):
                continue
            doc = (inspect.getdoc(obj) or "").strip().splitlines()
            if not doc or len(doc[0]) < 12 or len(doc[0]) > 90:
                continue
            found.setdefault(doc[0], f"{module_name}.{name}")
    return [{"prompt": f"Docstring: {d}\nName:", "completion": f" {n}"} for d, n in found.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/sft"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[str]] = {"train": [], "valid": []}
    for pair in pairs():
        bucket = hashlib.sha256(pair["completion"].encode()).digest()[0] % 10
        splits["valid" if bucket == 0 else "train"].append(json.dumps(pair))
    for split, lines in splits.items():
        (args.out / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"{split}: {len(lines)} pairs -> {args.out / f'{split}.jsonl'}")


if __name__ == "__main__":
    main()
