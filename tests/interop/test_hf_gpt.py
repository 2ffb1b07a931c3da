"""GPT-2 and GPT-NeoX twins: import, export and generation match `transformers` exactly."""

from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2TokenizerFast,
)

from lmforge.config import SamplingConfig
from lmforge.generation.loop import generate_tokens
from lmforge.interop.hf import export_hf, import_hf
from lmforge.model import GPT
from lmforge.rundir.load import load_run
from lmforge.tokenizer import Tokenizer

from .twins import TORTURE, hf_greedy, random_ids, right_padding, scaled_init, tiny_run

ATOL = 1e-4


def _save_hf_gpt2(
    out: Path, tokenizer: Tokenizer, tmp: Path, **overrides: object
) -> GPT2LMHeadModel:
    tokenizer.save(tmp / "tok.json")
    settings = {"n_positions": 96, "n_embd": 32, "n_layer": 2, "n_head": 4, **overrides}
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=tokenizer.vocab_size, **settings)).eval()
    scaled_init(model)
    model.save_pretrained(out)
    GPT2TokenizerFast(tokenizer_file=str(tmp / "tok.json")).save_pretrained(out)
    return model


@pytest.fixture
def imported(tmp_path: Path, bpe_tokenizer: Tokenizer) -> tuple[GPT2LMHeadModel, GPT]:
    hf = _save_hf_gpt2(tmp_path / "hf", bpe_tokenizer, tmp_path)
    import_hf(str(tmp_path / "hf"), tmp_path / "run")
    _, ours, _ = load_run(tmp_path / "run")
    return hf, ours


def test_imported_gpt2_logits_match_with_right_padding(imported: tuple) -> None:
    hf, ours = imported
    ids, mask = random_ids(hf.config.vocab_size, (3, 20)), right_padding([20, 13, 5], 20)
    with torch.no_grad():
        theirs = hf(ids, attention_mask=mask).logits
        mine = ours(ids, attention_mask=mask)
    real = mask.bool()
    assert theirs[real].abs().max() > 1.0  # logits large enough to notice a wrong layout
    torch.testing.assert_close(mine[real], theirs[real], atol=ATOL, rtol=0)


def test_imported_gpt2_logits_match_with_left_padding(imported: tuple) -> None:
    hf, ours = imported
    ids = random_ids(hf.config.vocab_size, (2, 16), seed=1)
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, :6] = 0
    positions = (mask.cumsum(1) - 1).clamp(min=0)  # what generate() passes for left padding
    with torch.no_grad():
        theirs = hf(ids, attention_mask=mask, position_ids=positions).logits
        mine = ours(ids, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(mine[real], theirs[real], atol=ATOL, rtol=0)


def test_cached_decoding_matches_uncached_on_imported_gpt2(imported: tuple) -> None:
    _, ours = imported
    ids = random_ids(ours.cfg.vocab_size, (1, 24), seed=2)
    with torch.no_grad():
        full = ours(ids)[0]
        cache = ours.new_kv_cache(1)
        stepped = [ours(ids[:, :8], kv_cache=cache)[0]]
        stepped += [ours(ids[:, t : t + 1], kv_cache=cache)[0] for t in range(8, 24)]
    torch.testing.assert_close(torch.cat(stepped), full, atol=1e-5, rtol=0)


def test_greedy_generation_of_64_tokens_equals_transformers(imported: tuple) -> None:
    hf, ours = imported
    prompt = random_ids(hf.config.vocab_size, (1, 12), seed=3)
    with torch.no_grad():
        theirs = hf_greedy(hf, prompt)
    sampling = SamplingConfig(max_new_tokens=64, temperature=0)
    mine = list(generate_tokens(ours, prompt[0].tolist(), sampling))
    assert len(theirs) == 64
    assert mine == theirs


def test_import_rebuilds_the_tokenizer_from_vocab_and_merges(
    tmp_path: Path, bpe_tokenizer: Tokenizer
) -> None:
    _save_hf_gpt2(tmp_path / "hf", bpe_tokenizer, tmp_path)
    (tmp_path / "hf" / "tokenizer.json").unlink()
    bpe_tokenizer.backend.model.save(str(tmp_path / "hf"))  # vocab.json + merges.txt
    reference = GPT2TokenizerFast.from_pretrained(tmp_path / "hf")  # reads vocab + merges
    import_hf(str(tmp_path / "hf"), tmp_path / "run")
    mine = Tokenizer.load(tmp_path / "run" / "tokenizer.json")
    expected = reference(TORTURE, add_special_tokens=False)["input_ids"]
    assert mine.encode(TORTURE) == expected
    assert mine.decode(expected) == TORTURE


def _our_run(tmp_path: Path, tokenizer: Tokenizer, **model: object) -> Path:
    return tiny_run(tmp_path / "ours", tokenizer, **model)


@pytest.mark.parametrize(
    ("model", "architecture"),
    [
        ({"pos_emb": "learned", "bias": True}, "GPT2LMHeadModel"),
        ({"pos_emb": "learned", "bias": False, "activation": "gelu"}, "GPT2LMHeadModel"),
        ({"pos_emb": "rope", "bias": False}, "GPTNeoXForCausalLM"),  # the demo model's shape
        ({"pos_emb": "rope", "bias": True, "tie_weights": False}, "GPTNeoXForCausalLM"),
    ],
)
def test_exported_model_loads_in_transformers_with_equal_logits(
    tmp_path: Path, bpe_tokenizer: Tokenizer, model: dict, architecture: str
) -> None:
    run = _our_run(tmp_path, bpe_tokenizer, **model)
    export_hf(run, tmp_path / "hf")
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(theirs).__name__ == architecture
    _, ours, _ = load_run(run)
    ids, mask = random_ids(bpe_tokenizer.vocab_size, (2, 40), seed=4), right_padding([40, 17], 40)
    with torch.no_grad():
        expected = ours(ids, attention_mask=mask)
        got = theirs(ids, attention_mask=mask).logits
    real = mask.bool()
    assert expected[real].abs().max() > 1.0
    torch.testing.assert_close(got[real], expected[real], atol=ATOL, rtol=0)


def test_export_then_import_round_trips_weights(tmp_path: Path, bpe_tokenizer: Tokenizer) -> None:
    run = _our_run(tmp_path, bpe_tokenizer, pos_emb="rope", bias=True)
    export_hf(run, tmp_path / "hf")
    import_hf(str(tmp_path / "hf"), tmp_path / "back")
    _, before, _ = load_run(run)
    _, after, _ = load_run(tmp_path / "back")
    for (name, a), (_, b) in zip(
        before.state_dict().items(), after.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_exported_tokenizer_gives_identical_ids_in_auto_tokenizer(
    tmp_path: Path, bpe_tokenizer: Tokenizer
) -> None:
    export_hf(_our_run(tmp_path, bpe_tokenizer), tmp_path / "hf")
    theirs = AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = theirs(TORTURE, add_special_tokens=False)["input_ids"]
    assert ids == bpe_tokenizer.encode(TORTURE)
    assert theirs.decode(ids) == TORTURE
    assert theirs.eos_token == "<|endoftext|>"
