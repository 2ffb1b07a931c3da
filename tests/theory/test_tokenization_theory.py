"""WordPiece encoding as BERT defines it — greedy longest match first — against the tokenizers
lmforge trains. (Training is another matter: the `tokenizers` WordPiece trainer lmforge uses
learns its vocabulary with BPE-style merges by pair frequency, not the likelihood criterion of
Schuster & Nakajima; docs/theory.md says so. Byte-level BPE has its own reference and tests in
tests/test_reference_bpe.py.)"""

from lmforge.tokenizer import BERT_UNK, Tokenizer

CORPUS = [
    "Tokenization splits words into pieces; unknown words become smaller pieces.",
    "The tokenizer learns frequent pieces: token, tokens, tokenize, tokenizer, tokenization.",
    "Playing, played, player and players share a stem. Replay the replayed play!",
    "Numbers like 2024 and 3.14 are split too, and punctuation stands alone.",
] * 20


def wordpiece_by_hand(word: str, vocab: dict[str, int], max_chars: int = 100) -> list[str]:
    """BERT's encoder for one word: from the start, take the longest vocabulary entry that
    prefixes what is left ("##"-marked after the first piece); if none exists at some point,
    the whole word is [UNK]."""
    if len(word) > max_chars:
        return [BERT_UNK]
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                break
            end -= 1
        if end == start:
            return [BERT_UNK]
        pieces.append(piece)
        start = end
    return pieces


def test_wordpiece_encoding_is_greedy_longest_match_first() -> None:
    tokenizer = Tokenizer.train_wordpiece(CORPUS, vocab_size=160)
    backend = tokenizer.backend
    vocab = backend.get_vocab()
    text = "Tokenizers replaying players' tokenization of 31415 unknowable words, ok?"
    normalized = backend.normalizer.normalize_str(text)
    words = [word for word, _ in backend.pre_tokenizer.pre_tokenize_str(normalized)]
    expected = [piece for word in words for piece in wordpiece_by_hand(word, vocab)]
    assert backend.encode(text, add_special_tokens=False).tokens == expected
    assert any(piece.startswith("##") for piece in expected)  # words really were split
    assert len(set(expected)) > 5
