"""lm-evaluation-harness over lmforge runs, offline: a local multiple-choice task and a rolling
perplexity task, written as task YAMLs over local JSONL files."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval", reason="lm-evaluation-harness is the [eval] extra")

from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast  # noqa: E402

from lmforge.cli.main import main  # noqa: E402
from lmforge.interop.harness import harness_model_class, register  # noqa: E402
from lmforge.interop.hf import import_hf  # noqa: E402
from lmforge.jobs.evaluate import evaluate_text  # noqa: E402
from lmforge.tokenizer import Tokenizer  # noqa: E402

TEXT = "The cat sat on the mat. " * 30 + "Then the dog ran after the cat, twice. " * 20
CORPUS = [TEXT, "Which animal? A cat, a dog, a bird, a fish. " * 30]


def _tasks(root: Path) -> Path:
    """Two task YAMLs and their data under root/tasks."""
    tasks = root / "tasks"
    tasks.mkdir()
    questions = [
        {
            # half the contexts end with a space, which lm-eval moves to the continuation
            "question": f"Question {i}: the animal on the mat is a" + " " * (i % 2),
            "choices": [" cat", " dog", " bird"] if i % 2 == 0 else ["cat", "dog", "bird"],
            "answer": i % 3,
        }
        for i in range(24)
    ]
    (tasks / "mc.jsonl").write_text("\n".join(map(json.dumps, questions)) + "\n")
    (tasks / "text.jsonl").write_text(json.dumps({"text": TEXT}) + "\n")
    common = "dataset_path: json\ntest_split: test\n"
    (tasks / "lmforge_mc.yaml").write_text(
        f"task: lmforge_mc\n{common}"
        f"dataset_kwargs:\n  data_files:\n    test: {tasks / 'mc.jsonl'}\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n"
    )
    (tasks / "lmforge_rolling.yaml").write_text(
        f"task: lmforge_rolling\n{common}"
        f"dataset_kwargs:\n  data_files:\n    test: {tasks / 'text.jsonl'}\n"
        "output_type: loglikelihood_rolling\n"
        'doc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: word_perplexity\n"
    )
    return tasks


def test_rolling_loglikelihood_is_evaluate_texts_summed_loss(
    trained_run: Path, tmp_path: Path
) -> None:
    model = harness_model_class()(run=str(trained_run))
    (tmp_path / "t.txt").write_text(TEXT)
    score, _ = evaluate_text(trained_run, tmp_path / "t.txt")
    (rolling,) = model.loglikelihood_rolling([SimpleNamespace(args=(TEXT,))])
    assert abs(rolling - (-score.loss * score.tokens)) <= 1e-4 * abs(rolling)
    (pair,) = model.loglikelihood([SimpleNamespace(args=("The cat sat on the", " mat"))])
    assert pair[0] < 0
    assert isinstance(pair[1], bool)
    (text,) = model.generate_until(
        [SimpleNamespace(args=("The cat", {"until": ["\n"], "max_gen_toks": 5}))]
    )
    assert "\n" not in text


def test_multiple_choice_accuracy_equals_lm_evals_hf_model(tmp_path: Path) -> None:
    """A random GPT-2, scored by lm-eval's own `hf` model and, imported, by `lmforge`."""
    tokenizer = Tokenizer.train_bpe(CORPUS, vocab_size=300)
    tokenizer.save(tmp_path / "tok.json")
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=tokenizer.vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=4
    )
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "hf")
    end = "<|endoftext|>"  # lm-eval's hf model scores an empty context after it
    hf_tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(tmp_path / "tok.json"), eos_token=end, bos_token=end
    )
    hf_tokenizer.save_pretrained(tmp_path / "hf")
    import_hf(str(tmp_path / "hf"), tmp_path / "run")
    tasks = _tasks(tmp_path)
    register()
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(tasks))
    scores = {}
    for model, args in (
        ("hf", f"pretrained={tmp_path / 'hf'},device=cpu"),
        ("lmforge", f"run={tmp_path / 'run'}"),
    ):
        out = lm_eval.simple_evaluate(
            model=model,
            model_args=args,
            tasks=["lmforge_mc"],
            task_manager=manager,
            log_samples=True,
        )
        lls = [r[0] for sample in out["samples"]["lmforge_mc"] for r in sample["filtered_resps"]]
        scores[model] = (out["results"]["lmforge_mc"]["acc,none"], torch.tensor(lls))
    assert scores["lmforge"][0] == scores["hf"][0]
    # not only the accuracy: every choice's log-likelihood (tokenised as lm-eval's hf does)
    torch.testing.assert_close(scores["lmforge"][1], scores["hf"][1], atol=1e-4, rtol=0)


def test_the_harness_verb_prints_lm_evals_results(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    tasks = _tasks(tmp_path)
    args = ["-q", "harness", str(trained_run), "--tasks", "lmforge_mc,lmforge_rolling"]
    args += [
        "--include-path",
        str(tasks),
        "--limit",
        "8",
        "--json",
        "--output",
        str(tmp_path / "out"),
    ]
    assert main(args) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= record["results"]["lmforge_mc"]["acc,none"] <= 1.0
    assert record["results"]["lmforge_rolling"]["word_perplexity,none"] > 1.0
    assert (tmp_path / "out" / "results.json").is_file()
    assert (
        main(["harness", str(trained_run), "--tasks", "no_such_task", "--include-path", str(tasks)])
        == 2
    )


def test_lm_evals_local_completions_against_serve_scores_as_the_adapter(
    trained_run: Path, tmp_path: Path
) -> None:
    """lm-eval's own OpenAI-completions model, pointed at `lmforge serve`, gets the scores the
    in-process adapter gets (max_length = the context minus the one token it asks for)."""
    import socket
    import subprocess
    import sys
    import time

    import httpx
    from lm_eval.tasks import TaskManager

    from lmforge.rundir.load import read_run_config

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "lmforge", "serve", str(trained_run), "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        tasks = _tasks(tmp_path)
        register()
        manager = TaskManager(include_path=str(tasks))
        context = read_run_config(trained_run).model.block_size
        remote = (
            f"base_url=http://127.0.0.1:{port}/v1/completions,tokenized_requests=True,"
            f"max_length={context - 1},model=run,num_concurrent=1"
        )
        scores = {}
        for model, args in (("local-completions", remote), ("lmforge", f"run={trained_run}")):
            out = lm_eval.simple_evaluate(
                model=model, model_args=args, tasks=["lmforge_mc"], task_manager=manager, limit=12
            )
            scores[model] = out["results"]["lmforge_mc"]["acc,none"]
        assert scores["local-completions"] == scores["lmforge"]
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_a_missing_extra_says_how_to_install_it(
    trained_run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if it were not installed
    assert main(["harness", str(trained_run), "--tasks", "x"]) == 2
    assert "pip install 'lmforge[eval]'" in capsys.readouterr().err
