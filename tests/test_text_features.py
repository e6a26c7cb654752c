"""Text extractors: tf-idf, MiniLM and Word2Vec."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from curata.features.base import REGISTRY
from curata.features.text import MiniLMText, NotFittedError, TfidfText, Word2VecText, tokenize

CORPUS = [
    "Red cotton t-shirt with a round neck, size M",
    "Blue cotton t-shirt, slim fit, size L",
    "Stainless steel water bottle, 750 ml, keeps drinks cold",
    "Insulated steel bottle for hot and cold drinks",
    "Café au lait mug, ceramic, 300 ml — crème colour",
    "陶瓷咖啡杯 300毫升",
    "Wooden chess set with folding board",
    "",
    "   ",
    "Pixel-art punk with a red cap and sunglasses",
    "Pixel-art ape with a blue cap",
]


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_tokenize() -> None:
    assert tokenize("Café-Noir 2x, ÉTÉ!") == ["café", "noir", "2x", "été"]
    assert tokenize("陶瓷 cup") == ["陶瓷", "cup"]
    assert tokenize("") == [] and tokenize(None) == [] and tokenize(" ,.; ") == []


def test_registry() -> None:
    assert REGISTRY["tfidf"] is TfidfText
    assert REGISTRY["minilm"] is MiniLMText
    assert REGISTRY["word2vec"] is Word2VecText
    assert TfidfText.needs_fit and Word2VecText.needs_fit and not MiniLMText.needs_fit
    assert all(cls.modality == "text" for cls in (TfidfText, MiniLMText, Word2VecText))


# ---------------------------------------------------------------------------------------------- tf-idf


def test_tfidf_fit_transform() -> None:
    ext = TfidfText()
    assert ext.dim == 4096 and not ext.is_fitted
    with pytest.raises(NotFittedError):
        ext.transform(["x"])
    X = ext.fit(CORPUS).transform([*CORPUS, None])
    assert X.shape == (len(CORPUS) + 1, 4096) and X.dtype == np.float32
    norms = np.linalg.norm(X, axis=1)
    empty = [i for i, t in enumerate([*CORPUS, None]) if not (t or "").strip()]
    assert np.all(norms[empty] == 0)
    assert np.allclose(np.delete(norms, empty), 1.0, atol=1e-5)
    # shared words and character n-grams: the two bottles are closer to each other than to a mug
    assert _cos(X[2], X[3]) > _cos(X[2], X[4])
    assert _cos(X[0], X[1]) > _cos(X[0], X[6])
    assert np.count_nonzero(X[5]) > 0  # a text without spaces still gets char n-grams


def test_tfidf_unseen_text_and_small_vocab() -> None:
    ext = TfidfText(word_features=8, char_features=0).fit(CORPUS)
    assert ext.dim == 8
    X = ext.transform(["zzzz qqqq", "with a red cap"])  # "a" and "with" are the most frequent terms
    assert X.shape == (2, 8)
    assert not X[0].any() and X[1].any()


def test_tfidf_all_empty_corpus() -> None:
    ext = TfidfText(word_features=16, char_features=16).fit(["", "  ", None])
    assert ext.is_fitted
    assert not ext.transform(["hello", ""]).any()


def test_tfidf_save_load_roundtrip(tmp_path: Path) -> None:
    ext = TfidfText(word_features=256, char_features=512, min_df=1).fit(CORPUS)
    ext.save(tmp_path)
    assert json.loads((tmp_path / "extractor.json").read_text())["key"] == ext.key
    assert not list(tmp_path.glob("*.pkl")) and not list(tmp_path.glob("*.joblib"))
    loaded = TfidfText(**ext.params()).load(tmp_path)
    assert loaded.is_fitted and loaded.key == ext.key
    probe = [*CORPUS, "a brand new text about cotton mugs", "ÉTÉ 陶瓷"]
    np.testing.assert_allclose(loaded.transform(probe), ext.transform(probe), atol=1e-6)


def test_tfidf_invalid_params() -> None:
    with pytest.raises(ValueError):
        TfidfText(word_features=0, char_features=0)


# ---------------------------------------------------------------------------------------------- MiniLM


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private CURATA_CACHE, so that this module exercises the ONNX export itself (once)."""
    root = tmp_path_factory.mktemp("curata_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CURATA_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def minilm(onnx_cache: Path) -> MiniLMText:
    return MiniLMText(threads=2)


# Short, long (> 128 and > 256 word pieces), accents, scripts without spaces, RTL, emoji with ZWJ and
# skin tone, combining marks, zero-width and no-break spaces, control characters, a 300-letter word
# (one [UNK]), punctuation only, surrounding whitespace, upper case.
PARITY_TEXTS = [
    "hi",
    "A red cotton t-shirt",
    "Café crème, 陶瓷咖啡杯 — ünïcödé ✓ naïve résumé Ærøskøbing",
    "Ελληνικά κείμενα, русский текст and العربية",
    "Emoji 🙂👍🏽 and a family 👩‍👩‍👧",
    "e\u0301 combining accent, \u200bzero width,\u00a0no-break space, tab\tnew\nline",
    "A" * 300,
    "!!! ??? ... ;;; ((( )))",
    "  surrounded by spaces  ",
    "DON'T SHOUT: e.g. U.S.A. 3.14 $100 50% #tag @user",
    " ".join(f"sentence {i} of a long product description with antidisestablishmentarianism" for i in range(30)),
    "Stainless steel water bottle, 750 ml, keeps drinks cold for 24 hours and hot for 12. " * 16,
]


def test_minilm_shapes_and_empty(minilm: MiniLMText) -> None:
    texts = ["A red cotton t-shirt", "", "   ", None, "Café crème, 陶瓷咖啡杯 — ünïcödé ✓", "x " * 400]
    X = minilm.transform(texts)
    assert X.shape == (len(texts), 384) and X.dtype == np.float32 and minilm.dim == 384
    norms = np.linalg.norm(X, axis=1)
    np.testing.assert_allclose(norms[[0, 4, 5]], 1.0, atol=1e-5)
    assert not X[[1, 2, 3]].any()
    assert minilm.transform([]).shape == (0, 384)


def test_minilm_semantics(minilm: MiniLMText) -> None:
    texts = [
        "A man is playing a guitar on stage.",
        "Someone performs music with a guitar in front of an audience.",
        "The stock market fell sharply on Tuesday.",
        "Stainless steel water bottle that keeps drinks cold.",
        "An insulated metal flask for cold beverages.",
    ]
    X = minilm.transform(texts)
    sim = X @ X.T
    assert sim[0, 1] > sim[0, 2] + 0.3
    assert sim[3, 4] > sim[3, 2] + 0.3
    assert sim[3, 4] > sim[3, 0]


def test_minilm_deterministic_and_batch_independent(minilm: MiniLMText) -> None:
    texts = [t for t in CORPUS if t.strip()][:5]
    a = minilm.transform(texts)
    b = np.concatenate([minilm.transform([t]) for t in texts])
    np.testing.assert_allclose(a, b, atol=1e-5)  # padding in a batch must not change a vector
    np.testing.assert_array_equal(minilm.transform(texts), a)


def test_minilm_matches_sentence_transformers(minilm: MiniLMText) -> None:
    """The ONNX path gives sentence-transformers' vectors (the extractor keeps version "1")."""
    from sentence_transformers import SentenceTransformer

    from curata.features.plugins import quiet_hf_loading
    from curata.features.text import minilm_path

    with quiet_hf_loading():
        reference = SentenceTransformer(str(minilm_path()), device="cpu", local_files_only=True)
    assert len(reference.tokenizer(PARITY_TEXTS[-1])["input_ids"]) > 256  # truncation is exercised
    for max_len in (128, 256):
        reference.max_seq_length = max_len
        expected = reference.encode(PARITY_TEXTS, normalize_embeddings=True, convert_to_numpy=True)
        # batch_size 3: several sub-batches of different lengths, put back in the caller's order.
        ours = MiniLMText(max_seq_length=max_len, batch_size=3, threads=2) if max_len != 128 else minilm
        got = ours.transform(PARITY_TEXTS)
        assert np.abs(got - expected).max() < 1e-5, max_len
    one = np.concatenate([minilm.transform([t]) for t in PARITY_TEXTS[:4]])
    np.testing.assert_allclose(one, minilm.transform(PARITY_TEXTS[:4]), atol=1e-6)


def test_minilm_runs_without_torch(minilm: MiniLMText, onnx_cache: Path, tmp_path: Path) -> None:
    """Once exported, encoding a query imports neither torch nor sentence-transformers."""
    expected = minilm.transform(["a red cotton shirt"])  # also makes sure the export exists
    out = tmp_path / "vec.npy"
    code = (
        "import sys, numpy as np\n"
        "from curata.features.text import MiniLMText\n"
        "np.save(sys.argv[1], MiniLMText(threads=1).transform(['a red cotton shirt']))\n"
        "heavy = sorted(m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    env = {**os.environ, "CURATA_CACHE": str(onnx_cache)}
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, env=env, timeout=120)
    np.testing.assert_allclose(np.load(out), expected, atol=1e-6)


def test_minilm_pickles_without_native_state(minilm: MiniLMText) -> None:
    import pickle

    minilm.transform(["warm"])
    clone = pickle.loads(pickle.dumps(minilm))
    assert clone._session is None and clone._tokenizer is None
    np.testing.assert_array_equal(clone.transform(CORPUS), minilm.transform(CORPUS))


def test_minilm_reexports_a_damaged_file(minilm: MiniLMText) -> None:
    from curata.features.text import minilm_onnx_path

    expected = minilm.transform(CORPUS[:3])
    minilm_onnx_path().write_bytes(b"not an onnx model")  # e.g. a disk that filled up mid-copy
    np.testing.assert_allclose(MiniLMText(threads=2).transform(CORPUS[:3]), expected, atol=1e-6)
    assert minilm_onnx_path().stat().st_size > 1_000_000


def test_minilm_params() -> None:
    assert MiniLMText().key != MiniLMText(max_seq_length=256).key
    with pytest.raises(ValueError):
        MiniLMText(max_seq_length=4)


# ---------------------------------------------------------------------------------------------- Word2Vec

W2V_CORPUS = [
    f"{color} {item} with {detail}"
    for color in ("red", "blue", "green", "black")
    for item in ("shirt", "dress", "bottle", "mug")
    for detail in ("a logo", "short sleeves", "a lid", "a handle")
] + ["", "café crème", "café noir"]


def test_word2vec_fit_transform() -> None:
    ext = Word2VecText(vector_size=16, epochs=5)
    with pytest.raises(NotFittedError):
        ext.transform(["x"])
    ext.fit(W2V_CORPUS)
    assert ext.dim == 16 and "shirt" in ext.vocabulary and "café" in ext.vocabulary
    X = ext.transform(["red shirt", "", "zzz unknown words", None, "RED Shirt!"])
    assert X.shape == (5, 16) and X.dtype == np.float32
    assert X[0].any() and not X[1].any() and not X[2].any() and not X[3].any()
    np.testing.assert_array_equal(X[0], X[4])  # case and punctuation do not matter
    np.testing.assert_array_equal(ext.transform(["red shirt"]), X[:1])


def test_word2vec_min_count_and_tiny_corpus() -> None:
    ext = Word2VecText(vector_size=8, epochs=2, min_count=2).fit(W2V_CORPUS)
    assert "crème" not in ext.vocabulary and "noir" not in ext.vocabulary  # seen once
    tiny = Word2VecText(vector_size=8, epochs=2, min_count=5).fit(["one lonely sentence"])
    assert set(tiny.vocabulary) == {"one", "lonely", "sentence"}  # nothing repeats: min_count falls to 1
    assert tiny.transform(["lonely"]).any()
    empty = Word2VecText(vector_size=8).fit(["", None, "  "])
    assert empty.is_fitted and not empty.transform(["anything"]).any()


def test_word2vec_deterministic_in_process() -> None:
    a = Word2VecText(vector_size=16, epochs=5, seed=7).fit(W2V_CORPUS)
    b = Word2VecText(vector_size=16, epochs=5, seed=7).fit(W2V_CORPUS)
    np.testing.assert_array_equal(a.transform(W2V_CORPUS), b.transform(W2V_CORPUS))
    c = Word2VecText(vector_size=16, epochs=5, seed=8).fit(W2V_CORPUS)
    assert not np.array_equal(a.transform(W2V_CORPUS), c.transform(W2V_CORPUS))


def test_word2vec_deterministic_across_processes(tmp_path: Path) -> None:
    """Same vectors under a different PYTHONHASHSEED (gensim's default hash would differ)."""
    ext = Word2VecText(vector_size=16, epochs=5, seed=3).fit(W2V_CORPUS)
    corpus_file = tmp_path / "corpus.json"
    corpus_file.write_text(json.dumps(W2V_CORPUS))
    code = (
        "import json, sys, numpy as np\n"
        "from curata.features.text import Word2VecText\n"
        "c = json.load(open(sys.argv[1]))\n"
        "np.save(sys.argv[2], Word2VecText(vector_size=16, epochs=5, seed=3).fit(c).transform(c))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    out = tmp_path / "vec.npy"
    subprocess.run([sys.executable, "-c", code, str(corpus_file), str(out)], check=True, env=env, timeout=120)
    np.testing.assert_array_equal(np.load(out), ext.transform(W2V_CORPUS))


def test_word2vec_save_load_roundtrip(tmp_path: Path) -> None:
    ext = Word2VecText(vector_size=12, epochs=3).fit(W2V_CORPUS)
    ext.save(tmp_path)
    loaded = Word2VecText(**ext.params()).load(tmp_path)
    assert loaded.is_fitted and loaded.vocabulary == ext.vocabulary
    np.testing.assert_array_equal(loaded.transform(W2V_CORPUS), ext.transform(W2V_CORPUS))
    with pytest.raises(ValueError, match="shape"):
        Word2VecText(vector_size=13).load(tmp_path)
