"""Chinese end to end on the command line, as a user runs it: prepare --tokenizer wordpiece
--documents paragraph --normalize nfkc -> pretrain a tiny BERT -> finetune classify on Chinese
hotel reviews with Chinese labels -> predict on Chinese sentences."""

import json
import random
import re
import unicodedata
from pathlib import Path

import pytest

from lmforge.data.sentence_split import HAN, split_sentences
from lmforge.data.shards import TokenShards
from lmforge.tokenizer import Tokenizer

from .conftest import run_cli

HOTELS = ["这家酒店", "那个宾馆", "我们住的民宿", "市中心的酒店", "机场旁边的宾馆", "海边的客栈"]
THINGS = ["房间", "床", "卫生间", "早餐", "前台", "服务", "环境", "位置"]
GOOD = ["很好", "干净", "舒服", "安静", "整洁", "热情", "方便", "不错"]
BAD = ["很差", "很脏", "太吵", "难受", "破旧", "冷淡", "不方便", "糟糕"]
PEOPLE = ["我朋友", "我妈妈", "同事", "老板", "导游"]
ENDS = ["。", "！", "？", "。”", "！”"]
BERT_MINI = Path(__file__).resolve().parents[2] / "configs" / "bert-mini.yaml"
POSITIVE, NEGATIVE = "正面", "负面"  # Chinese labels: they must survive labels.json and predict

PRETRAIN_SETS = [
    f"--set={item}"
    for item in (
        "model.n_layer=2",
        "model.n_head=2",
        "model.n_embd=32",
        "model.block_size=32",
        "model.dropout=0.0",
        "train.batch_size=8",
        "train.max_steps=20",
        "train.warmup_steps=2",
        "train.eval_interval=10",
        "train.eval_batches=2",
        "train.checkpoint_interval=10",
        "train.progress=false",
    )
]
FINETUNE_SETS = [
    f"--set={item}"
    for item in (
        "train.lr=3e-3",
        "finetune.epochs=6",
        "train.batch_size=16",
        "train.patience=3",
        "train.progress=false",
    )
]


def _sentence(rng: random.Random) -> str:
    """One short review sentence, sometimes quoted speech, with a Chinese sentence end."""
    words = rng.choice((GOOD, BAD))
    body = f"{rng.choice(HOTELS)}的{rng.choice(THINGS)}{rng.choice(words)}"
    end = rng.choice(ENDS)
    if end.endswith("”"):
        return f"{rng.choice(PEOPLE)}说：“{body}{end}"
    return body + end


def _review(rng: random.Random, label: str) -> str:
    words = GOOD if label == POSITIVE else BAD
    first, second = rng.sample(words, 2)
    return f"{rng.choice(HOTELS)}的{rng.choice(THINGS)}{first}，{rng.choice(THINGS)}也{second}"


def _write_tsv(path: Path, rows: list[tuple[str, str]]) -> Path:
    text = "review\tsentiment\n" + "".join(f"{t}\t{y}\n" for t, y in rows)
    path.write_text(text, encoding="utf-8")
    return path


def _rows(rng: random.Random, n: int) -> list[tuple[str, str]]:
    labels = [rng.choice((POSITIVE, NEGATIVE)) for _ in range(n)]
    return [(_review(rng, y), y) for y in labels]


def _ok(*args: str) -> str:
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done.stdout


def _squash(text: str) -> str:
    """Text as the uncased nfkc tokenizer sees it, without the spaces WordPiece decodes with."""
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text).lower())


@pytest.fixture(scope="module")
def chinese(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """All four commands, once (about 15 s, most of it starting Python and torch)."""
    root = tmp_path_factory.mktemp("zh")
    rng = random.Random(17)
    # Paragraphs of 3-8 sentences with no spaces between them; the full-width ＷｉＦｉ is folded
    # by nfkc (and lowercased) to the ASCII wifi that some paragraphs spell.
    paragraphs = []
    for i in range(240):
        sentences = [_sentence(rng) for _ in range(rng.randint(3, 8))]
        wifi = "ＷｉＦｉ" if i % 2 else "wifi"
        sentences.insert(rng.randint(0, len(sentences)), f"第{i}天的{wifi}信号很好。")
        paragraphs.append("".join(sentences))
    corpus = root / "reviews.txt"
    corpus.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    data, run, classifier = root / "data", root / "run", root / "classifier"
    prepare = ["prepare", "--input", str(corpus), "--out", str(data), "--tokenizer", "wordpiece"]
    prepare += ["--documents", "paragraph", "--normalize", "nfkc", "--vocab-size", "300"]
    _ok(*prepare)
    _ok(
        "pretrain",
        "--config",
        str(BERT_MINI),
        "--data",
        str(data),
        "--out",
        str(run),
        *PRETRAIN_SETS,
    )
    train = _write_tsv(root / "train.tsv", _rows(rng, 200))
    dev = _write_tsv(root / "dev.tsv", _rows(rng, 40))
    finetune = ["finetune", "classify", "--base", str(run), "--train", str(train)]
    finetune += ["--valid", str(dev), "--text-column", "review", "--label-column", "sentiment"]
    _ok(*finetune, "--out", str(classifier), *FINETUNE_SETS)
    unseen = [
        ("海边的客栈的房间很干净，床也舒服", POSITIVE),
        ("那个宾馆的卫生间很脏，环境也太吵", NEGATIVE),
        ("我们住的民宿的早餐不错，服务也热情", POSITIVE),
        ("机场旁边的宾馆的前台冷淡，位置也不方便", NEGATIVE),
    ]
    queries = _write_tsv(root / "queries.tsv", unseen)
    predictions = root / "predictions.jsonl"
    predict = ["predict", str(classifier), "--input", str(queries), "--output", str(predictions)]
    predict_out = _ok(*predict, "--label-column", "sentiment")
    return {
        "paragraphs": paragraphs,
        "data": data,
        "run": run,
        "classifier": classifier,
        "unseen": unseen,
        "predictions": predictions,
        "predict_out": predict_out,
    }


def test_split_sentences_cuts_chinese_at_stops_and_keeps_closing_quotes() -> None:
    text = "房间很干净。老板说：“早餐很好。”我们很满意！真的吗？！他问：“还来吗？”会的。"
    assert split_sentences(text) == [
        "房间很干净。",
        "老板说：“早餐很好。”",
        "我们很满意！",
        "真的吗？！",
        "他问：“还来吗？”",
        "会的。",
    ]


def test_prepare_indexes_chinese_sentences_with_their_closing_quotes(chinese: dict) -> None:
    meta = json.loads((chinese["data"] / "meta.json").read_text(encoding="utf-8"))
    assert meta["tokenizer_kind"] == "wordpiece"
    tokenizer = Tokenizer.load(chinese["data"] / "tokenizer.json")
    shards = TokenShards(chinese["data"])
    expected = [_squash(s) for p in chinese["paragraphs"] for s in split_sentences(p)]
    indexed = []
    documents = 0
    for split in ("train", "val"):
        corpus = shards.sentences(split)
        documents += corpus.num_documents
        indexed += [
            _squash(tokenizer.decode(corpus.sentence(i).tolist()))
            for i in range(corpus.num_sentences)
        ]
    # every paragraph is a document, and the index holds each sentence exactly as split
    assert documents == len(chinese["paragraphs"])
    assert sorted(indexed) == sorted(expected)
    assert all(re.search(r"[。!?]”?$", s) for s in indexed)  # nfkc folds ！？ to !?
    quoted = [s for s in indexed if s.endswith("”")]
    assert quoted
    assert all("“" in s for s in quoted)
    assert not [s for s in indexed if s.startswith("”")]  # a quote never opens the next one


def test_wordpiece_vocabulary_holds_han_characters_and_nfkc_folds(chinese: dict) -> None:
    tokenizer = Tokenizer.load(chinese["run"] / "tokenizer.json")
    vocab = set(tokenizer.vocab())
    han = [t for t in vocab if re.fullmatch(rf"(##)?[{HAN}]+", t)]
    for character in "酒店房间干净舒服吵脏差好说":
        assert character in vocab, character
    assert len(han) >= 50
    assert tokenizer.unk_id not in tokenizer.encode("这家酒店的房间很干净！早餐不错。")
    assert tokenizer.encode("ＷｉＦｉ信号") == tokenizer.encode("wifi信号")


def test_pretraining_ran_and_the_classifier_wrote_its_report(chinese: dict) -> None:
    run, classifier = chinese["run"], chinese["classifier"]
    assert json.loads((run / "config.json").read_text())["model"]["arch"] == "bert"
    assert (run / "model.safetensors").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 10, 20]
    for key in ("val_mlm_loss", "val_nsp_loss"):
        assert all(0 < r[key] < 10 for r in evals), key
    for name in ("metrics.jsonl", "labels.json", "confusion_matrix.png", "model.safetensors"):
        assert (classifier / name).is_file(), name
    labels = json.loads((classifier / "labels.json").read_text(encoding="utf-8"))
    assert sorted(labels["labels"]) == sorted([POSITIVE, NEGATIVE])
    records = [json.loads(line) for line in (classifier / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_accuracy" in r]
    assert evals
    assert max(r["val_accuracy"] for r in evals) >= 0.9  # the sentiment words decide the label


def test_predict_writes_readable_chinese(chinese: dict) -> None:
    raw = chinese["predictions"].read_bytes().decode("utf-8")  # strict: no broken bytes
    rows = [json.loads(line) for line in raw.splitlines()]
    assert [r["text"] for r in rows] == [text for text, _ in chinese["unseen"]]
    for (text, gold), row in zip(chinese["unseen"], rows, strict=True):
        assert text in raw  # written as Chinese characters, not \\u escapes
        assert row["label"] == gold
        assert set(row["probabilities"]) == {POSITIVE, NEGATIVE}
        assert sum(row["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    assert "\\u" not in raw
    assert "accuracy" in chinese["predict_out"]
