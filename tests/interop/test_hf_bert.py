"""BERT twins: import and export match `transformers`' BertForPreTraining, tokenizer included."""

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForPreTraining, BertModel, BertTokenizerFast

from lmforge.interop.hf import export_hf, import_hf
from lmforge.rundir.load import load_run
from lmforge.tokenizer import Tokenizer

from .twins import TORTURE, random_ids, right_padding, scaled_init

ATOL = 1e-4
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "pack", "box"]


def _write_vocab(path: Path) -> None:
    """A small BERT vocab.txt: specials, characters seen in TORTURE, words and ## pieces."""
    chars = sorted({c for c in TORTURE.lower() if not c.isspace()})
    pieces = [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *chars, *pieces]
    path.write_text("\n".join(dict.fromkeys(tokens)) + "\n", encoding="utf-8")


def _save_hf_bert(
    out: Path, tmp: Path, model_class: type = BertForPreTraining, intermediate: int = 128
) -> torch.nn.Module:
    tmp.mkdir(parents=True, exist_ok=True)
    _write_vocab(tmp / "vocab.txt")
    tokenizer = BertTokenizerFast.from_pretrained(tmp)  # reads vocab.txt
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=intermediate,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = model_class(config).eval()
    scaled_init(model)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return model


def _inputs(vocab: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = random_ids(vocab, (3, 24), seed=7)
    types = (torch.arange(24) >= 10).long().expand(3, 24).clone()
    return ids, types, right_padding([24, 15, 6], 24)


@pytest.mark.parametrize("intermediate", [128, 48], ids=["4x", "tinybert-style"])
def test_imported_bert_mlm_and_nsp_logits_match_with_padding(
    tmp_path: Path, intermediate: int
) -> None:
    """Any MLP width imports (TinyBERT-style checkpoints are not 4x their width)."""
    hf = _save_hf_bert(tmp_path / "hf", tmp_path / "vocab", intermediate=intermediate)
    import_hf(str(tmp_path / "hf"), tmp_path / "run")
    _, ours, _ = load_run(tmp_path / "run")
    ids, types, mask = _inputs(hf.config.vocab_size)
    with torch.no_grad():
        theirs = hf(ids, attention_mask=mask, token_type_ids=types)
        mine = ours(ids, types, mask)
    real = mask.bool()
    assert theirs.prediction_logits[real].abs().max() > 1.0
    torch.testing.assert_close(mine.mlm[real], theirs.prediction_logits[real], atol=ATOL, rtol=0)
    torch.testing.assert_close(mine.nsp, theirs.seq_relationship_logits, atol=ATOL, rtol=0)


def test_importing_a_bare_bert_model_keeps_random_heads_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hf = _save_hf_bert(tmp_path / "hf", tmp_path / "vocab", model_class=BertModel)
    import_hf(str(tmp_path / "hf"), tmp_path / "run")
    assert "random initialisation" in caplog.text
    _, ours, _ = load_run(tmp_path / "run")
    ids, types, mask = _inputs(hf.config.vocab_size)
    with torch.no_grad():
        theirs = hf(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        mine = ours.encode(ids, types, mask)
    torch.testing.assert_close(mine[mask.bool()], theirs[mask.bool()], atol=ATOL, rtol=0)


def test_exported_bert_loads_in_transformers_with_equal_logits(tmp_path: Path) -> None:
    _save_hf_bert(tmp_path / "hf", tmp_path / "vocab")
    import_hf(str(tmp_path / "hf"), tmp_path / "run")
    _, ours, _ = load_run(tmp_path / "run")
    export_hf(tmp_path / "run", tmp_path / "exported")
    theirs = BertForPreTraining.from_pretrained(tmp_path / "exported").eval()
    ids, types, mask = _inputs(ours.cfg.vocab_size)
    with torch.no_grad():
        expected = ours(ids, types, mask)
        got = theirs(ids, attention_mask=mask, token_type_ids=types)
    real = mask.bool()
    torch.testing.assert_close(got.prediction_logits[real], expected.mlm[real], atol=ATOL, rtol=0)
    torch.testing.assert_close(got.seq_relationship_logits, expected.nsp, atol=ATOL, rtol=0)


@pytest.mark.parametrize("keep_tokenizer_json", [True, False])
def test_bert_tokenizer_ids_match_both_ways(tmp_path: Path, keep_tokenizer_json: bool) -> None:
    _save_hf_bert(tmp_path / "hf", tmp_path / "vocab")
    if not keep_tokenizer_json:  # an older save: rebuilt from vocab.txt + tokenizer_config.json
        (tmp_path / "hf" / "tokenizer.json").unlink()
        vocab = (tmp_path / "vocab" / "vocab.txt").read_bytes()
        (tmp_path / "hf" / "vocab.txt").write_bytes(vocab)
    reference = BertTokenizerFast.from_pretrained(tmp_path / "vocab")  # reads vocab.txt
    import_hf(str(tmp_path / "hf"), tmp_path / "run")
    mine = Tokenizer.load(tmp_path / "run" / "tokenizer.json")
    pair = ("First sentence, naïve.", "Second 日本 🤖 one")
    expected_single = reference(TORTURE)
    expected_pair = reference(*pair)
    single = mine.backend.encode(TORTURE)
    both = mine.backend.encode(*pair)
    assert single.ids == expected_single["input_ids"]
    assert both.ids == expected_pair["input_ids"]
    assert both.type_ids == expected_pair["token_type_ids"]
    export_hf(tmp_path / "run", tmp_path / "exported")
    auto = AutoTokenizer.from_pretrained(tmp_path / "exported")
    assert auto(TORTURE)["input_ids"] == expected_single["input_ids"]
    assert auto(*pair)["token_type_ids"] == expected_pair["token_type_ids"]
    assert auto.mask_token == "[MASK]"
    assert auto.pad_token_id == reference.pad_token_id
