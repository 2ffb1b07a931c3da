"""Mutation check: do the tests catch realistic one-line bugs in lmforge?

Each mutation in scripts/mutations.toml replaces one exact piece of source text (it must occur
exactly once in its file) with a plausible slip, such as 1/d for 1/√d or a forgotten warmup
offset, and names the test files or node ids that should fail because of it. The script

1. checks every mutation against the current files, and refuses to start (exit 2, naming the
   mutation and file) when any original is missing or occurs more than once, or a named test
   file or test function no longer exists;
2. copies the working tree (src/, tests/, configs/, pyproject.toml, ...) into a temporary
   directory and checks that `import lmforge`, `python -m lmforge` and the `lmforge` console
   script all resolve into the copy there (PYTHONPATH=<copy>/src shadows the editable install);
3. runs the union of the selected mutations' tests once without any mutation (the baseline
   must pass: a bug "caught" by a test that already fails proves nothing);
4. applies each mutation to the copy, runs `python -m pytest -x -q -p no:cacheprovider
   TESTS` in the copy, restores the file, and prints one line per mutation (with the first
   failing test), then a table and the catch rate. A mutation whose tests run past --timeout
   counts as not caught (TIMEOUT), like a survivor.

The full list takes about 7 minutes on two cores (the baseline half a minute of it).

The real working tree is never written to. The exit status is 0 only when every mutation
run was caught; mutations marked `equivalent = "why"` are listed but not run or counted, and
`pending = true` ones (their tests are still being written) run only with --include-pending.

Usage:
    .venv/bin/python scripts/mutation_check.py              # every non-pending mutation
    .venv/bin/python scripts/mutation_check.py --list       # the list, with anchor checks
    .venv/bin/python scripts/mutation_check.py --only attn-scale-sdpa,lr-warmup-offset
    .venv/bin/python scripts/mutation_check.py --markdown   # the table in Markdown
    .venv/bin/python scripts/mutation_check.py --jobs 2 --timeout 300
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from queue import Queue

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).with_name("mutations.toml")
# What the tests read besides their own files: the package, the shipped configs (test_config,
# test_trainer_metrics read configs/*.yaml relative to the repository), the project metadata
# (pytest settings in pyproject.toml) and the small top-level files some tests may name.
COPIED = ("src", "tests", "configs", "examples", "pyproject.toml", "README.md", "Makefile")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "*.egg-info")
PYTEST = ("-m", "pytest", "-x", "-q", "-p", "no:cacheprovider")
# Where the package, the console script's module and `python -m lmforge`'s module come from:
# every path printed must lie inside the copy.
WHERE = (
    "import importlib.util, lmforge, lmforge.cli.main; "
    "print(lmforge.__file__, lmforge.cli.__file__, "
    "importlib.util.find_spec('lmforge.__main__').origin)"
)


@dataclass(frozen=True)
class Mutation:
    """One realistic bug: replace `original` (exactly once in `file`) with `replacement`."""

    id: str
    file: str
    why: str
    tests: tuple[str, ...]
    original: str = ""  # empty only while pending: the text is still to be pinned down
    replacement: str = ""
    equivalent: str = ""
    pending: bool = False


@dataclass
class Outcome:
    """What running a mutation's tests gave."""

    mutation: Mutation
    status: str  # caught | SURVIVED | TIMEOUT | ERROR | equivalent | pending
    seconds: float = 0.0
    detail: str = ""
    caught: bool = False


# ---------------------------------------------------------------- the data


def load_mutations(path: Path) -> list[Mutation]:
    """The mutations of a TOML file of [[mutation]] tables; unknown or missing keys are errors."""
    with path.open("rb") as handle:
        data = tomllib.load(handle)
    known = set(Mutation.__dataclass_fields__)
    mutations = []
    for index, entry in enumerate(data.get("mutation", []), start=1):
        unknown = set(entry) - known
        if unknown:
            raise SystemExit(f"{path}: mutation #{index} has unknown keys {sorted(unknown)}")
        try:
            mutations.append(Mutation(**{**entry, "tests": tuple(entry["tests"])}))
        except (KeyError, TypeError) as exc:
            raise SystemExit(f"{path}: mutation #{index} ({entry.get('id')}): {exc}") from None
    ids = [m.id for m in mutations]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise SystemExit(f"{path}: duplicate mutation ids {duplicates}")
    return mutations


def anchor_problems(mutation: Mutation, root: Path) -> list[str]:
    """Why this mutation cannot be applied to the files under root (empty when it can)."""
    path = root / mutation.file
    if not path.is_file():
        return [f"{mutation.id}: file {mutation.file} does not exist"]
    problems = []
    if mutation.pending and not mutation.original:
        return []  # its text is still to be pinned down; select() never runs it like this
    count = path.read_text(encoding="utf-8").count(mutation.original) if mutation.original else 0
    if count != 1:
        where = "is not in" if count == 0 else f"occurs {count} times in"
        problems.append(f"{mutation.id}: its original text {where} {mutation.file}")
    if mutation.original == mutation.replacement:
        problems.append(f"{mutation.id}: replacement equals the original")
    if not mutation.tests:
        problems.append(f"{mutation.id}: names no tests")
    if not mutation.pending:
        problems += [f"{mutation.id}: {p}" for t in mutation.tests if (p := missing_test(root, t))]
    return problems


def missing_test(root: Path, test: str) -> str:
    """Why a test file or node id (file::test_name[param]) is not there; empty when it is."""
    file, _, node = test.partition("::")
    if not (root / file).is_file():
        return f"test file {file} does not exist"
    name = node.split("::")[-1].split("[")[0]
    if name and f"def {name}(" not in (root / file).read_text(encoding="utf-8"):
        return f"{file} has no test {name}"
    return ""


def check_anchors(mutations: Iterable[Mutation], root: Path, data: Path) -> None:
    """Refuse (exit 2) unless every mutation applies exactly once, before anything runs."""
    problems = [p for m in mutations for p in anchor_problems(m, root)]
    if problems:
        lines = ["mutation_check: REFUSING TO RUN: the mutation list no longer fits the code:"]
        lines += [f"  - {problem}" for problem in problems]
        lines.append(f"fix {data} (each original must occur exactly once in its file)")
        print("\n".join(lines), file=sys.stderr)
        raise SystemExit(2)


def select(mutations: list[Mutation], only: str, include_pending: bool) -> list[Mutation]:
    """The mutations --only names (all by default); pending ones only when asked for."""
    unpinned = [m.id for m in mutations if m.pending and not m.original]
    if not only:
        chosen = [m for m in mutations if include_pending or not m.pending]
        if include_pending and unpinned:
            print(f"skipping pending mutations without original text: {unpinned}")
        return [m for m in chosen if m.original]
    wanted = [i.strip() for i in only.split(",") if i.strip()]
    by_id = {m.id: m for m in mutations}
    unknown = [i for i in wanted if i not in by_id]
    if unknown:
        raise SystemExit(f"--only: unknown mutation ids {unknown}; see --list")
    if set(wanted) & set(unpinned):
        raise SystemExit(f"--only: {sorted(set(wanted) & set(unpinned))} have no original yet")
    return [by_id[i] for i in wanted]


# ---------------------------------------------------------------- the copy


def make_copy(root: Path, dest: Path) -> Path:
    """The working tree's files the tests need, copied (uncommitted changes included)."""
    dest.mkdir(parents=True)
    for name in COPIED:
        source = root / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=IGNORED)
        elif source.is_file():
            shutil.copy2(source, dest / name)
    return dest


def test_env(copy: Path) -> dict[str, str]:
    """The environment of every run: the copy's src first on the import path, this Python's
    bin first on PATH (the `lmforge` script there honours PYTHONPATH), no bytecode written
    (a restored file of the same size and second must never run a stale mutated .pyc)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(copy / "src")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("PYTEST_ADDOPTS", None)
    return env


def console_python() -> str:
    """The interpreter of the `lmforge` console script next to this Python (its shebang)."""
    script = Path(sys.executable).parent / "lmforge"
    if not script.is_file():
        return sys.executable
    first = script.read_text(encoding="utf-8", errors="replace").splitlines()[0]
    return first.removeprefix("#!").strip() or sys.executable


def verify_copy(copy: Path, env: dict[str, str]) -> None:
    """Assert that the package, `python -m lmforge` and the console script import the copy."""
    src = (copy / "src").resolve()
    for interpreter in (sys.executable, console_python()):
        done = subprocess.run(
            [interpreter, "-c", WHERE], cwd=copy, env=env, capture_output=True, text=True
        )
        found = [Path(p).resolve() for p in done.stdout.split()]
        if done.returncode != 0 or not found or not all(p.is_relative_to(src) for p in found):
            raise SystemExit(
                f"mutation_check: {interpreter} imports lmforge from {found}, not from the "
                f"copy {src}; the mutations would not be tested\n{done.stderr}"
            )
    script = shutil.which("lmforge", path=env["PATH"])
    if script is not None:
        done = subprocess.run([script, "--help"], cwd=copy, env=env, capture_output=True)
        if done.returncode != 0:
            raise SystemExit(f"mutation_check: {script} --help failed in the copy")


def warn_if_src_modified(root: Path) -> None:
    """Say which source files differ from git HEAD: the copy takes them as they are now (a
    colleague's half-done edit, or a mutation applied by hand, would be copied too)."""
    done = subprocess.run(
        ["git", "status", "--porcelain", "--", "src"], cwd=root, capture_output=True, text=True
    )
    changed = [line[3:] for line in done.stdout.splitlines() if line.strip()]
    if changed:
        print(f"note: copying uncommitted changes in {', '.join(changed)}", flush=True)


# ---------------------------------------------------------------- running


def run_pytest(
    copy: Path, env: dict[str, str], tests: Sequence[str], timeout: float
) -> tuple[int | None, float, str]:
    """(pytest's exit code or None on timeout, seconds, the end of its output). On a timeout
    the whole process group goes: pytest and whatever it started (CLI runs, torchrun)."""
    base = copy.parent / f"{copy.name}-tmp"
    command = [sys.executable, *PYTEST, f"--basetemp={base}", *tests]
    start = time.perf_counter()
    with subprocess.Popen(
        command,
        cwd=copy,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            return None, time.perf_counter() - start, output[-2000:]
    return process.returncode, time.perf_counter() - start, output[-2000:]


def apply(copy: Path, mutation: Mutation) -> str:
    """Write the mutated file into the copy; returns the original text to restore."""
    path = copy / mutation.file
    text = path.read_text(encoding="utf-8")
    assert text.count(mutation.original) == 1, mutation.id
    path.write_text(text.replace(mutation.original, mutation.replacement), encoding="utf-8")
    return text


def restore(copy: Path, mutation: Mutation, text: str) -> None:
    path = copy / mutation.file
    path.write_text(text, encoding="utf-8")
    assert path.read_text(encoding="utf-8") == text, f"{mutation.id}: restore failed"


def judge(mutation: Mutation, code: int | None, seconds: float, tail: str) -> Outcome:
    """pytest 1 (a test failed) or 2 (collection failed) is a catch; 0 a survivor."""
    if code is None:
        return Outcome(mutation, "TIMEOUT", seconds, tail)
    if code in (1, 2):
        detail = "collection error" if code == 2 else _first_failure(tail)
        return Outcome(mutation, "caught", seconds, detail, caught=True)
    if code == 0:
        return Outcome(mutation, "SURVIVED", seconds)
    return Outcome(mutation, "ERROR", seconds, f"pytest exit {code}: {tail[-300:]}")


def _first_failure(tail: str) -> str:
    """The first `FAILED tests/...::test_x` line of pytest's summary, shortened."""
    lines = [line for line in tail.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return lines[0].split(" - ")[0][:120] if lines else ""


def run_mutation(mutation: Mutation, copies: Queue[Path], timeout: float) -> Outcome:
    """Apply, test and restore one mutation in a copy taken from the pool."""
    copy = copies.get()
    try:
        text = apply(copy, mutation)
        try:
            code, seconds, tail = run_pytest(copy, test_env(copy), mutation.tests, timeout)
        finally:
            restore(copy, mutation, text)
        return judge(mutation, code, seconds, tail)
    finally:
        copies.put(copy)


def baseline(copy: Path, mutations: Sequence[Mutation], timeout: float) -> None:
    """The union of the tests must pass unmutated, or no verdict would mean anything."""
    tests = sorted({t for m in mutations for t in m.tests})
    print(f"baseline: {len(tests)} test files/ids without mutations ...", flush=True)
    code, seconds, tail = run_pytest(copy, test_env(copy), tests, timeout * 3)
    if code != 0:
        print(tail)
        why = f"ran past {timeout * 3:.0f} s" if code is None else f"fails (pytest exit {code})"
        raise SystemExit(f"mutation_check: the baseline {why}; fix it first")
    print(f"baseline: passed in {seconds:.0f} s", flush=True)


def run_all(mutations: Sequence[Mutation], copies: list[Path], timeout: float) -> list[Outcome]:
    """Every runnable mutation, len(copies) at a time; a progress line as each finishes."""
    pool: Queue[Path] = Queue()
    for copy in copies:
        pool.put(copy)
    outcomes = []
    with ThreadPoolExecutor(max_workers=len(copies)) as executor:
        futures = [executor.submit(run_mutation, m, pool, timeout) for m in mutations]
        for done, future in enumerate(as_completed(futures), start=1):
            outcome = future.result()
            outcomes.append(outcome)
            note = f"  {outcome.detail}" if outcome.detail else ""
            print(
                f"[{done}/{len(mutations)}] {outcome.mutation.id:<32} {outcome.status:<8} "
                f"{outcome.seconds:6.1f} s{note}",
                flush=True,
            )
    order = {m.id: i for i, m in enumerate(mutations)}
    return sorted(outcomes, key=lambda o: order[o.mutation.id])


# ---------------------------------------------------------------- reporting


def rows_of(outcomes: Sequence[Outcome]) -> list[list[str]]:
    rows = []
    for o in outcomes:
        m = o.mutation
        status = f"equivalent: {m.equivalent}" if o.status == "equivalent" else o.status
        tests = ", ".join(t.removeprefix("tests/") for t in m.tests)
        seconds = f"{o.seconds:.0f}" if o.seconds else "-"
        rows.append([m.id, m.file.removeprefix("src/lmforge/"), m.why, tests, status, seconds])
    return rows


HEADER = ["mutation", "file", "what it breaks", "tests", "result", "s"]


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    for column, cap in ((2, 60), (3, 50), (4, 40)):  # --markdown shows them whole
        widths[column] = min(widths[column], cap)
    lines = []
    for row in [HEADER, *rows]:
        cells = [c if len(c) <= w else c[: w - 1] + "…" for c, w in zip(row, widths, strict=True)]
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(HEADER), line(["---"] * len(HEADER)), *map(line, rows)])


def summary(outcomes: Sequence[Outcome]) -> tuple[int, int, str]:
    """(caught, counted, the line that says so); equivalent and pending ones are not counted."""
    counted = [o for o in outcomes if o.status not in ("equivalent", "pending")]
    caught = sum(o.caught for o in counted)
    share = f" ({100 * caught / len(counted):.0f}%)" if counted else ""
    skipped = len(outcomes) - len(counted)
    extra = f"; {skipped} equivalent or pending not run" if skipped else ""
    return caught, len(counted), f"caught {caught} of {len(counted)}{share}{extra}"


def list_mutations(mutations: Sequence[Mutation]) -> None:
    """--list: every mutation with its state and whether its text still applies."""
    for m in mutations:
        problems = anchor_problems(m, ROOT)
        state = "pending" if m.pending else ("equivalent" if m.equivalent else "active")
        anchor = "ok" if not problems else "BROKEN: " + "; ".join(problems)
        if m.pending and not m.original:
            anchor = "original not pinned down yet"
        print(f"{m.id:<32} {state:<10} {m.file}  [{anchor}]")
        print(f"    {m.why}")
        print(f"    tests: {' '.join(m.tests)}")


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated mutation ids to run")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--jobs", type=int, default=1, help="mutations run at once (1)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per mutation")
    parser.add_argument("--markdown", action="store_true", help="print the table in Markdown")
    parser.add_argument("--include-pending", action="store_true", help="run pending ones too")
    parser.add_argument("--data", type=Path, default=DATA, help="the mutations file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    mutations = load_mutations(args.data)
    if args.list:
        list_mutations(mutations)
        return 0
    chosen = select(mutations, args.only, args.include_pending)
    check_anchors(mutations, ROOT, args.data)  # all of them, whatever runs
    runnable = [m for m in chosen if not m.equivalent]
    skipped = [Outcome(m, "equivalent") for m in chosen if m.equivalent]
    if not args.only:
        skipped += [Outcome(m, "pending") for m in mutations if m.pending and m not in chosen]
    warn_if_src_modified(ROOT)
    workdir = Path(tempfile.mkdtemp(prefix="lmforge-mutants-"))
    try:
        copies = [make_copy(ROOT, workdir / f"tree{i}") for i in range(max(1, args.jobs))]
        for copy in copies:
            verify_copy(copy, test_env(copy))
        print(f"copied the working tree to {workdir}; lmforge imports from the copy", flush=True)
        if runnable:
            baseline(copies[0], runnable, args.timeout)
        outcomes = run_all(runnable, copies, args.timeout) + skipped
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    rows = rows_of(outcomes)
    print()
    print(markdown_table(rows) if args.markdown else text_table(rows))
    caught, counted, line = summary(outcomes)
    print(line)
    for o in outcomes:
        if not o.caught and o.status not in ("equivalent", "pending"):
            print(f"  {o.status}: {o.mutation.id} ({o.mutation.file}): {o.mutation.why}")
    return 0 if caught == counted else 1


if __name__ == "__main__":
    sys.exit(main())
