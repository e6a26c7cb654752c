"""`Describer`: keywords and a sentence for workspace items or new images, from every available source.

Sources (each optional but the colours): the newest `tags` bundle (P(tag) per tag), the newest
`collection` bundle (what collection / algorithm it comes from, used as the sentence's subject when
it is confident), the zero-label colour namer on the object (`curata.features.colour_names`), and the
tags and text of the nearest neighbours in image-embedding space; for photos and paintings (collections not tagged with
`trait=value` traits) content words from EfficientNet-Lite0's ImageNet head under a popularity prior
(`curata.describe.content`). With a CLIP plug-in path the merged keywords are reranked by image-text
similarity.

Memory: when the collection's embedding matrix fits the memory budget (`curata.budget`) the collection
frame and every neighbour vector are held, exactly as before. Past it, the neighbours come from a
persistent vector index (`IndexedNeighbourVotes`, built once from streamed chunks and updated when items
change) and described items are looked up by id, so nothing the size of the collection is held.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from curata.budget import matrix_bytes, memory_budget, rows_within_budget
from curata.describe.content import ContentWords, content_logits, open_content
from curata.describe.keywords import Keyword, merge, tag_keywords
from curata.describe.neighbours import IndexedNeighbourVotes, NeighbourVotes
from curata.describe.sentence import make_sentence
from curata.features.engine import compute, load_matrix, make_extractor
from curata.imageio import load_image
from curata.progress import SILENT, Reporter
from curata.tasks.bundle import BundleError, bundle_cards, load_bundle, load_card
from curata.tasks.runner import bundle_extractors, extract_blocks, predict_blocks
from curata.vectors import l2_rows
from curata.workspace import Workspace

SUBJECT_MIN_PROBABILITY = 0.5  # below this the collection model's guess is a keyword, not the subject


@dataclass
class DescribeOptions:
    tag_bundle: str | None = None         # bundle name in models/; None = the newest `tags` bundle
    collection_bundle: str | None = None  # None = the newest `collection` bundle
    embedding: str = "effnet_lite0"       # space in which neighbours are found
    neighbours: int = 10
    colour_vocabulary: str = "basic"      # basic (12 terms) or css
    clip_path: str | None = None          # a local CLIP model folder: rerank keywords by similarity
    use_models: bool = True               # False: colours and neighbours only
    content_words: bool | None = None     # ImageNet content words; None: on unless items have trait tags
    content_prior: str = "divide"         # popularity prior: divide (idf-like), subtract or none


def find_bundle(workspace: Workspace, task: str, name: str | None = None) -> Path | None:
    """The named bundle, or the most recently created bundle of `task` in the workspace's models/."""
    models = workspace.dir("models")
    if name:
        path = models / name
        card = load_card(path)  # BundleError when it is not a bundle
        if card.task != task:
            raise BundleError(f"bundle '{name}' is a {card.task} model, not a {task} model")
        return path
    found = []
    for folder, _ in bundle_cards(models):
        try:
            card = load_card(folder)
        except BundleError:
            continue
        if card.task == task:
            found.append((card.created, folder))
    return max(found)[1] if found else None


class Describer:
    def __init__(self, workspace: Workspace, options: DescribeOptions,
                 votes: NeighbourVotes | IndexedNeighbourVotes | None,
                 bundles: dict[str, tuple[Path, Any, Any, dict[str, Any]]], items: pd.DataFrame | None,
                 content: ContentWords | None = None):
        self.workspace = workspace
        # The collection as it was at open, like the neighbours: reopen to see items added since.
        # None over the memory budget: described items are then looked up by id in the table.
        self.items = items.set_index("id", drop=False) if items is not None else None
        self.options = options
        self.votes = votes
        self.bundles = bundles  # source -> (bundle dir, fitted task, card, its loaded extractors)
        self._embedder = make_extractor(options.embedding)
        self._clip: tuple[Any, Any] | None = None
        self.content = content
        # The content words read effnet_lite0's head, or its views where the workspace has them
        # (`content.embedding`): computed per image unless they are the neighbour space's own vectors.
        self._content_embedder = (None if content is None or options.embedding == content.embedding
                                  else make_extractor(content.embedding))

    @classmethod
    def open(cls, workspace: Workspace, options: DescribeOptions | None = None, *,
             reporter: Reporter = SILENT) -> Describer:
        """Load the sources once; computes the neighbour embedding for items that lack it (cached)."""
        options = options or DescribeOptions()
        if not workspace.exists:
            raise ValueError(f"no collection in workspace {workspace.root} (run `curata ingest` first)")
        embedder = make_extractor(options.embedding)
        compute(embedder, workspace, reporter=reporter)
        votes: NeighbourVotes | IndexedNeighbourVotes | None = None
        items: pd.DataFrame | None = None
        if matrix_bytes(workspace.collection.count(), embedder.dim) <= memory_budget():
            items = workspace.items()
            matrix, errors = load_matrix(workspace, embedder, items)
            ok = np.array([e is None for e in errors], bool)
            if ok.sum() >= 2:
                kept = items[ok]
                votes = NeighbourVotes(kept["id"].tolist(), matrix[ok], [list(t) for t in kept["tags"]],
                                       kept["text"].tolist(), k=options.neighbours)
        else:  # over budget: neighbours through the persistent index, items by id
            indexed = IndexedNeighbourVotes.open(workspace, embedder, k=options.neighbours, reporter=reporter)
            votes = indexed if len(indexed) >= 2 else None
        bundles: dict[str, tuple[Path, Any, Any, dict[str, Any]]] = {}
        if options.use_models:
            for source, task, name in (("tags", "tags", options.tag_bundle),
                                       ("collection", "collection", options.collection_bundle)):
                path = find_bundle(workspace, task, name)
                if path is not None:
                    model, card = load_bundle(path)
                    bundles[source] = (path, model, card, bundle_extractors(card, path))
        content = open_content(workspace, items, enabled=options.content_words, mode=options.content_prior)
        return cls(workspace, options, votes, bundles, items, content)

    @property
    def sources(self) -> dict[str, str]:
        out = {"colour": f"object colours ({self.options.colour_vocabulary} names)"}
        out.update({source: bundle[0].name for source, bundle in self.bundles.items()})
        if self.votes is not None:
            out["neighbours"] = f"{self.options.neighbours} nearest in {self.options.embedding}"
        if self.content is not None:
            out["content"] = (f"ImageNet head of {self.content.embedding}, popularity prior over "
                              f"{self.content.n_reference} items")
        if self.options.clip_path:
            out["clip"] = str(self.options.clip_path)
        return out

    # Public entry points ---------------------------------------------------------------------------

    def describe_items(self, ids: Sequence[str], top_k: int = 10) -> list[dict[str, Any]]:
        """Describe workspace items by id (an unknown id or an unreadable image gets an error entry)."""
        if self.items is None:  # over budget: a budget-sized batch of items (their vectors) at a time
            step = rows_within_budget(matrix_bytes(1, self._embedder.dim))
            if len(ids) > step:
                return [row for a in range(0, len(ids), step) for row in self.describe_items(ids[a:a + step], top_k)]
        items = self.items if self.items is not None else self._lookup(ids)
        out: list[dict[str, Any]] = []
        good, images, texts = [], [], []
        for i, item_id in enumerate(ids):
            if item_id not in items.index:
                out.append({"id": item_id, "error": f"no item '{item_id}' in the workspace"})
                continue
            row = items.loc[item_id]
            try:
                images.append(load_image(row["image"]))
            except (OSError, ValueError) as e:
                out.append({"id": item_id, "error": getattr(e, "reason", str(e))})
                continue
            texts.append(row["text"] if isinstance(row["text"], str) else "")
            good.append(i)
            out.append({"id": item_id})
        if good:
            ref = [ids[i] for i in good]
            vectors = self._item_vectors(items.loc[ref])
            described = self._describe(images, texts, vectors, ref, top_k)
            positions = [j for j, entry in enumerate(out) if "error" not in entry]
            for j, entry in zip(positions, described, strict=True):
                out[j].update(entry)
        return out

    def describe_images(self, images: Sequence[np.ndarray], top_k: int = 10,
                        texts: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Describe decoded RGB images (e.g. uploads) that are not in the workspace."""
        if not images:
            return []
        texts = list(texts) if texts is not None else [""] * len(images)
        vectors = self._embedder.transform([self._embedder.prepare(im) for im in images])
        return self._describe(list(images), texts, vectors, [None] * len(images), top_k)

    # Internals -------------------------------------------------------------------------------------

    def _lookup(self, ids: Sequence[str]) -> pd.DataFrame:
        """The rows of `ids` read from the table (over budget the collection frame is not held)."""
        wanted = sorted({str(i) for i in ids})
        rows = self.workspace.collection.by_ids(wanted, ["id", "image", "image_sha256", "text"])
        return rows.drop_duplicates("id").set_index("id", drop=False)

    def _item_vectors(self, rows: pd.DataFrame) -> np.ndarray:
        matrix, errors = load_matrix(self.workspace, self._embedder, rows)
        if any(e is not None for e in errors):  # not cached (e.g. just ingested): compute these rows
            missing = [i for i, e in enumerate(errors) if e is not None]
            fresh = self._embedder.transform([self._embedder.prepare(load_image(rows.iloc[i]["image"]))
                                              for i in missing])
            matrix[missing] = fresh
        return matrix

    def _describe(self, images: list[np.ndarray], texts: list[str], vectors: np.ndarray,
                  ids: list[str | None], top_k: int) -> list[dict[str, Any]]:
        groups: list[list[list[Keyword]]] = [[] for _ in images]
        colours = [self._colours(im) for im in images]
        for i, named in enumerate(colours):
            groups[i].append([Keyword(c["name"], c["share"], "colour") for c in named[:3]])
        subjects: list[str | None] = [None] * len(images)
        if "collection" in self.bundles:
            for i, row in enumerate(self._predict("collection", images, texts)):
                # The best class is a keyword with its probability even when the open-set model says
                # "unknown"; it becomes the sentence's subject only when the model commits to it.
                label, proba = max(row.get("scores", {}).items(), key=lambda kv: kv[1], default=("", 0.0))
                if label:
                    groups[i].append([Keyword(label, float(proba), "collection")])
                    if row["prediction"] == label and proba >= SUBJECT_MIN_PROBABILITY:
                        subjects[i] = label
        if "tags" in self.bundles:
            _, task, card, extractors = self.bundles["tags"]
            scores = task.predict_proba(extract_blocks(extractors, images, texts))
            for i in range(len(images)):
                groups[i].append(tag_keywords(scores[i], card.labels, "tags", top_k))
        if self.content is not None:
            if self._content_embedder is None:
                features = vectors
            else:
                features = self._content_embedder.transform([self._content_embedder.prepare(im) for im in images])
            for i, words in enumerate(self.content.keywords(content_logits(self.content.embedding, features), top_k)):
                groups[i].append(words)
        neighbour_lists: list[list[tuple[str, float]]] = [[] for _ in images]
        if self.votes is not None:
            exclude = ids if any(i is not None for i in ids) else None
            for i, votes in enumerate(self.votes.vote(vectors, exclude, top_k)):
                groups[i].append(votes)
            neighbour_lists = self.votes.neighbour_ids(vectors, exclude)
        out = []
        for i in range(len(images)):
            keywords = merge(groups[i], top_k)
            if self.options.clip_path:
                keywords = self._rerank_with_clip(images[i], keywords)
            pairs = [(c["name"], c["share"]) for c in colours[i]]
            out.append({
                "keywords": [k.to_dict() for k in keywords],
                "sentence": make_sentence(pairs, subjects[i], keywords, content=self.content is not None),
                "colours": colours[i],
                "neighbours": [{"id": n, "similarity": s} for n, s in neighbour_lists[i]],
            })
        return out

    def _predict(self, source: str, images: list[np.ndarray], texts: list[str]) -> list[dict[str, Any]]:
        _, task, card, extractors = self.bundles[source]
        return predict_blocks(task, card, extract_blocks(extractors, images, texts), top=1)

    def _colours(self, image: np.ndarray) -> list[dict[str, Any]]:
        """The object's colour names [{"name", "share" (of the object), "hex"}], largest first: the one
        zero-label namer that /v1/colours also calls (`name_colours`), so the two never disagree."""
        from curata.features.colour_names import name_colours

        key = "basic" if self.options.colour_vocabulary == "basic" else "css"
        return [c.to_dict() for c in name_colours(image, vocabulary=key).object]

    def _rerank_with_clip(self, image: np.ndarray, keywords: list[Keyword]) -> list[Keyword]:
        """Half the score from the sources, half from CLIP's image-text similarity (min-max scaled per
        image, since raw CLIP cosines sit in a narrow band)."""
        if not keywords:
            return keywords
        if self._clip is None:
            self._clip = (make_extractor("hf_clip_image", path=self.options.clip_path),
                          make_extractor("hf_clip_text", path=self.options.clip_path))
        image_encoder, text_encoder = self._clip
        image_vector = l2_rows(image_encoder.transform([image_encoder.prepare(image)]))[0]
        text_vectors = l2_rows(text_encoder.transform([f"a picture of {k.keyword}" for k in keywords]))
        sims = text_vectors @ image_vector
        span = float(sims.max() - sims.min())
        scaled = (sims - sims.min()) / span if span > 1e-9 else np.full_like(sims, 0.5)
        reranked = [Keyword(k.keyword, 0.5 * k.score + 0.5 * float(s), f"{k.source}+clip", k.tag)
                    for k, s in zip(keywords, scaled, strict=True)]
        return sorted(reranked, key=lambda k: (-k.score, k.keyword))
