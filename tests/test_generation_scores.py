"""SFT generation scores: exact match, and BLEU / chrF with hypotheses and references in their
places (both are asymmetric), from completions stubbed in place of a model; BLEU's tokenizer
for Chinese, Japanese and Korean, and `evaluate --sft --bleu-tokenize`."""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import sacrebleu

from lmforge.cli.main import build_parser, main
from lmforge.data.sft import Pair
from lmforge.errors import ConfigError
from lmforge.jobs import evaluate as evaluate_job

REFERENCES = [
    "the cat sat on the mat today",
    "a quick brown fox jumps over the lazy dog",
    "pack my box with five dozen jugs",
]
# shorter than the references (BLEU's brevity penalty) and missing words (chrF's recall)
OUTPUTS = [" the cat sat on the mat", "a quick fox jumps over the dog ", "pack my box with five"]

ZH_REFERENCES = [
    "今天天气很好，我们去公园散步吧。",
    "他说这本书非常有意思。",
    "我明天要去北京开会。",
]
ZH_NEAR_MISSES = ["今天天气很好，我们去公园走走吧。", "他说这本书很有意思。", "我明天去北京开会。"]
ZH_UNRELATED = ["猫在桌子上睡觉。", "银行周末不开门。", "这道数学题太难了。"]


@dataclass
class _Cfg:
    block_size: int = 64


class _Model:
    cfg = _Cfg()


class _Tokenizer:
    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]


def _stub(monkeypatch: pytest.MonkeyPatch, outputs: list[str]) -> list[list[str]]:
    """score_generation over a stub run whose greedy completions are outputs; records prompts."""
    calls: list[list[str]] = []

    def generate(model: object, tokenizer: object, prompts: list[str], *args, **kwargs):
        calls.append(list(prompts))
        return iter(outputs[: len(prompts)])

    monkeypatch.setattr(evaluate_job, "load_run", lambda run: (None, _Model(), _Tokenizer()))
    monkeypatch.setattr(evaluate_job, "generate", generate)
    return calls


@pytest.fixture
def stubbed(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    return _stub(monkeypatch, OUTPUTS)


def test_scores_compare_hypotheses_with_references(stubbed: list[list[str]]) -> None:
    pairs = [Pair(f"prompt {i}", f" {ref} ") for i, ref in enumerate(REFERENCES)]
    scores = evaluate_job.score_generation(Path("run"), pairs)
    assert stubbed == [[p.prompt for p in pairs]]
    hypotheses = [o.strip() for o in OUTPUTS]
    bleu = sacrebleu.corpus_bleu(hypotheses, [REFERENCES]).score
    chrf = sacrebleu.corpus_chrf(hypotheses, [REFERENCES]).score
    assert scores["bleu"] == pytest.approx(bleu)
    assert scores["chrf"] == pytest.approx(chrf)
    # not vacuous: both metrics change when the sides are swapped
    assert bleu != pytest.approx(sacrebleu.corpus_bleu(REFERENCES, [hypotheses]).score)
    assert chrf != pytest.approx(sacrebleu.corpus_chrf(REFERENCES, [hypotheses]).score)
    assert scores["examples"] == 3
    assert scores["exact_match"] == 0.0
    assert scores["bleu_tokenize"] == "13a"  # English: sacrebleu's default, as before
    assert scores["bleu"] == pytest.approx(
        sacrebleu.corpus_bleu(hypotheses, [REFERENCES], tokenize="13a").score
    )


def test_exact_match_compares_stripped_texts(stubbed: list[list[str]]) -> None:
    pairs = [Pair("p", " the cat sat on the mat\n"), Pair("q", "a quick dog")]
    scores = evaluate_job.score_generation(Path("run"), pairs)
    assert scores["exact_match"] == 0.5
    assert scores["samples"][0] == {"prompt": "p", "output": "the cat sat on the mat"}


def test_chinese_bleu_equals_sacrebleus_zh_score(monkeypatch: pytest.MonkeyPatch) -> None:
    _stub(monkeypatch, ZH_NEAR_MISSES)
    pairs = [Pair(f"问题 {i}", ref) for i, ref in enumerate(ZH_REFERENCES)]
    scores = evaluate_job.score_generation(Path("run"), pairs)
    zh = sacrebleu.corpus_bleu(ZH_NEAR_MISSES, [ZH_REFERENCES], tokenize="zh").score
    assert scores["bleu_tokenize"] == "zh"
    assert scores["bleu"] == pytest.approx(zh)
    assert zh > 60  # measured 69.6; 13a sees each sentence as one word and gives 0
    assert sacrebleu.corpus_bleu(ZH_NEAR_MISSES, [ZH_REFERENCES]).score == 0.0


def test_chinese_chrf_is_high_for_a_near_miss_and_low_for_unrelated_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """chrF counts character n-grams, so it needs no tokenizer: measured 61.0 and 1.4."""
    pairs = [Pair(f"问题 {i}", ref) for i, ref in enumerate(ZH_REFERENCES)]
    _stub(monkeypatch, ZH_NEAR_MISSES)
    near = evaluate_job.score_generation(Path("run"), pairs)
    _stub(monkeypatch, ZH_UNRELATED)
    unrelated = evaluate_job.score_generation(Path("run"), pairs)
    assert near["chrf"] > 50
    assert unrelated["chrf"] < 10
    assert unrelated["bleu"] < 5


@pytest.mark.parametrize(
    ("references", "tokenizer"),
    [
        (REFERENCES, "13a"),
        (ZH_REFERENCES, "zh"),
        (["2024年3月14日，价格是3.14元。"], "zh"),  # digits and punctuation are not letters
        (["我们用 PyTorch 训练这个模型。"], "zh"),  # 9 Han letters of 16
        (["We train the model with 深度学习 methods."], "13a"),  # a few Han in English
        (["今日は天気がいいですね。", "東京へ行きます。"], "char"),  # Japanese: Kana runs
        (["안녕하세요. 만나서 반갑습니다."], "char"),  # Korean
        (["", "   ", "123 !?"], "13a"),  # no letters at all
    ],
)
def test_auto_bleu_tokenizer_follows_the_references_script(
    references: list[str], tokenizer: str
) -> None:
    assert evaluate_job.bleu_tokenizer(references) == tokenizer


def test_the_bleu_tokenizer_can_be_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _stub(monkeypatch, OUTPUTS)
    pairs = [Pair(f"prompt {i}", ref) for i, ref in enumerate(REFERENCES)]
    hypotheses = [o.strip() for o in OUTPUTS]
    for name in ("13a", "zh", "char", "intl", "none"):
        scores = evaluate_job.score_generation(Path("run"), pairs, bleu_tokenize=name)
        expected = sacrebleu.corpus_bleu(hypotheses, [REFERENCES], tokenize=name).score
        assert (scores["bleu_tokenize"], scores["bleu"]) == (name, pytest.approx(expected))
    assert evaluate_job.bleu(hypotheses, REFERENCES, "char")[0] != pytest.approx(
        evaluate_job.bleu(hypotheses, REFERENCES, "13a")[0]
    )
    calls.clear()
    with pytest.raises(ConfigError, match="ja-mecab"):
        evaluate_job.score_generation(Path("run"), pairs, bleu_tokenize="ja-mecab")
    assert calls == []  # refused before generating anything


def test_evaluate_sft_passes_bleu_tokenize_and_reports_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    seen: list[str] = []

    def evaluate_sft(run: Path, file: Path, bleu_tokenize: str = "auto") -> dict:
        seen.append(bleu_tokenize)
        return {"examples": 1, "exact_match": 0.0, "bleu": 7.5, "bleu_tokenize": "zh"} | {
            "chrf": 30.0,
            "samples": [],
        }

    monkeypatch.setattr(evaluate_job, "evaluate_sft", evaluate_sft)
    assert main(["evaluate", "run", "--sft", "pairs.jsonl", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["bleu_tokenize"] == "zh"
    assert main(["evaluate", "run", "--sft", "pairs.jsonl", "--bleu-tokenize", "char"]) == 0
    assert "BLEU 7.50 (tokenize zh), chrF 30.00" in capsys.readouterr().out
    assert seen == ["auto", "char"]
    evaluate_parser = build_parser()._subparsers._group_actions[0].choices["evaluate"]
    (option,) = [a for a in evaluate_parser._actions if a.dest == "bleu_tokenize"]
    assert tuple(option.choices) == evaluate_job.BLEU_TOKENIZERS
