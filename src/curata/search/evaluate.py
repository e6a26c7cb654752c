"""Retrieval evaluation as in NFT1000: text->image and image->text recall@K, per collection and pooled,
plus a collection difficulty index.

- text->image: every caption queries the images; a hit when its own image ranks in the top K.
- image->text: every image queries the captions; a hit when one of its own captions is in the top K.
- Within a collection the gallery is that collection's evaluated items; pooled, it is all of them.
- Identical images (same content hash) count as the same image.
- Items come from the bundle's recorded split: `val` (held-out items of the training collections),
  `holdout` (collections never seen in training, `--holdout` at training time), or `all`.

Collection difficulty index (higher = harder to search), from cosines in the evaluated space over
the collection's items i (image vector v_i) and captions j (vector u_j, owner item o(j)):

    S_img = mean over image pairs i != i' of cos(v_i, v_i')        (images look alike)
    S_txt = mean over caption pairs of different items of cos(u_j, u_j')   (captions read alike)
    A     = mean_j cos(u_j, v_o(j)) - mean over j, i != o(j) of cos(u_j, v_i)  (alignment gap)
    D     = (S_img + S_txt) / 2 - A

D lies in [-2, 2]; it rises when images or captions are hard to tell apart and falls when a caption
is clearly closer to its own image than to the others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from curata.progress import SILENT, Reporter
from curata.search.captions import ItemCaptions, PartialQuery, partial_queries
from curata.search.encoders import JointEncoder, QueryEncoder, make_encoder
from curata.search.joint import KS, cached_text_features, load_data, recall_at_k
from curata.workspace import Workspace

SUBSETS = ("auto", "val", "holdout", "all")


def difficulty(images: np.ndarray, texts: np.ndarray, owner: np.ndarray) -> dict[str, float]:
    """The difficulty index D and its parts (see the module docstring); owner[j] = row of caption j's item.
    O(n d): pair means come from sums of vectors, never from an n x n matrix."""
    n, m = len(images), len(texts)
    if n < 2 or m < 2:
        return {}
    total_v = images.sum(0)
    s_img = (total_v @ total_v - np.einsum("ij,ij->", images, images)) / (n * (n - 1))
    per_owner = np.zeros_like(images)
    np.add.at(per_owner, owner, texts)
    counts = np.bincount(owner, minlength=n)
    total_u = texts.sum(0)
    pairs = m * m - int((counts**2).sum())
    s_txt = (total_u @ total_u - np.einsum("ij,ij->", per_owner, per_owner)) / pairs if pairs else 0.0
    matched = np.einsum("ij,ij->i", texts, images[owner])
    unmatched = (texts @ total_v - matched).sum() / (m * (n - 1))
    align = matched.mean() - unmatched
    return {"difficulty": round(float((s_img + s_txt) / 2 - align), 4), "image_similarity": round(float(s_img), 4),
            "caption_similarity": round(float(s_txt), 4), "alignment": round(float(align), 4)}


def _metrics(images: np.ndarray, texts: np.ndarray, groups: np.ndarray, cap_group: np.ndarray,
             ks: Sequence[int]) -> dict[str, float]:
    t2i = recall_at_k(texts, images, cap_group, groups, ks)
    i2t = recall_at_k(images, texts, groups, cap_group, ks)
    return {**{f"t2i_r{k}": round(v, 4) for k, v in t2i.items()}, **{f"i2t_r{k}": round(v, 4) for k, v in i2t.items()}}


def evaluate_rows(image_emb: np.ndarray, caption_emb: np.ndarray, caption_owner: np.ndarray, groups: np.ndarray,
                  collections: np.ndarray, ks: Sequence[int] = KS) -> dict[str, Any]:
    """Per-collection and pooled recall@K and difficulty over embedded items and captions."""
    cap_group = groups[caption_owner]
    out: dict[str, Any] = {"collections": {}}
    for name in sorted(set(collections)):
        rows = np.flatnonzero(collections == name)
        remap = -np.ones(len(groups), np.int64)
        remap[rows] = np.arange(len(rows))
        caps = np.flatnonzero(np.isin(caption_owner, rows))
        out["collections"][str(name)] = {
            "items": len(rows), "captions": len(caps),
            **_metrics(image_emb[rows], caption_emb[caps], groups[rows], cap_group[caps], ks),
            **difficulty(image_emb[rows], caption_emb[caps], remap[caption_owner[caps]]),
        }
    out["pooled"] = {"items": len(groups), "captions": len(caption_owner),
                     **_metrics(image_emb, caption_emb, groups, cap_group, ks),
                     **difficulty(image_emb, caption_emb, caption_owner)}
    return out


def evaluate_retrieval(workspace: Workspace, model: str | None = None, *, subset: str = "auto",
                       captions: str | None = None, ks: Sequence[int] = KS, encoder: QueryEncoder | None = None,
                       reporter: Reporter = SILENT, write: bool = True) -> dict[str, Any]:
    """Evaluate a joint space (or a CLIP encoder) on the workspace; `subset` picks the items (see module doc).

    Returns {"model", "ks", "sets": {"val"|"holdout"|"all": {"collections": {...}, "pooled": {...}}}}.
    """
    if subset not in SUBSETS:
        raise ValueError(f"unknown subset {subset!r}; choose from {', '.join(SUBSETS)}")
    encoder = encoder or make_encoder(workspace, model)
    items = workspace.items()
    if items.empty:
        raise ValueError(f"the workspace {workspace.root} has no items")
    split: dict[str, list[str]] = encoder.space.split() if isinstance(encoder, JointEncoder) else {}
    if subset == "auto":
        wanted = [s for s in ("val", "holdout") if split.get(s)] or ["all"]
    elif subset == "all":
        wanted = ["all"]
    else:
        if not split.get(subset):
            raise ValueError(f"the model records no {subset!r} items (only joint spaces trained here have a split"
                             f"{'; train with --holdout to have unseen collections' if subset == 'holdout' else ''})")
        wanted = [subset]
    caption_source = captions or (encoder.space.card["params"].get("captions", "auto")
                                  if isinstance(encoder, JointEncoder) else "auto")
    payload: dict[str, Any] = {"model": encoder.card, "ks": list(ks), "captions": caption_source, "sets": {}}
    for name in wanted:
        subset_items = items if name == "all" else items[items["id"].isin(set(split[name]))]
        if subset_items.empty:
            raise ValueError(f"none of the model's {name} items are in the workspace any more")
        payload["sets"][name] = _evaluate_items(workspace, encoder, subset_items.reset_index(drop=True),
                                                caption_source, ks, reporter)
    if write:
        payload["report"] = str(workspace.write_report("retrieval", payload))
    return payload


def _evaluate_items(workspace: Workspace, encoder: QueryEncoder, items, caption_source: str, ks: Sequence[int],
                    reporter: Reporter) -> dict[str, Any]:
    if isinstance(encoder, JointEncoder):
        space = encoder.space
        data = load_data(workspace, items, space.image_extractor(), space.text_extractor(), captions=caption_source,
                         reporter=reporter)
        image_emb = space.embed_images(data.image_features)
        cap_rows = [c for cs in data.captions for c in cs]
        caption_emb = space.embed_texts(data.text_features[cap_rows])
        owner = np.array([i for i, cs in enumerate(data.captions) for _ in cs], np.int64)
        kept, groups, kept_caps = data.items, data.groups, data.item_captions
        text_ext = space.text_extractor()

        def embed_queries(texts: list[str]) -> np.ndarray:
            return space.embed_texts(cached_text_features(workspace, text_ext, texts))
    else:
        from curata.search.captions import item_captions

        encoder.compute_features(workspace, reporter)
        image_emb = encoder.encode_items(workspace, items, reporter=reporter)
        ok = np.flatnonzero(np.linalg.norm(image_emb, axis=1) > 0)
        caps = item_captions(items.iloc[ok], caption_source)
        keep = [j for j, c in enumerate(caps) if c.captions]
        kept = items.iloc[ok[keep]].reset_index(drop=True)
        image_emb = image_emb[ok[keep]]
        texts = [t for j in keep for t in caps[j].captions]
        owner = np.array([n for n, j in enumerate(keep) for _ in caps[j].captions], np.int64)
        caption_emb = encoder.encode_texts(texts)
        _, groups = np.unique(kept["image_sha256"].to_numpy(dtype=str), return_inverse=True)
        kept_caps = [caps[j] for j in keep]
        embed_queries = encoder.encode_texts
    if len(kept) < 2:
        raise ValueError("fewer than 2 items with image features and captions to evaluate")
    collections = kept["collection"].to_numpy(dtype=str)
    result = evaluate_rows(image_emb, caption_emb, owner, np.asarray(groups), collections, ks)
    result["partial"] = partial_evaluation(kept_caps, image_emb, embed_queries, np.asarray(groups), collections)
    return result


def format_table(payload: dict[str, Any], ks: Sequence[int] | None = None
                 ) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) per evaluated set, for the CLI and the benchmark to print (`ks`: the
    recall columns shown, default all evaluated)."""
    ks = [k for k in (ks or payload["ks"]) if k in payload["ks"]]
    header = ["collection", "items", *[f"t2i@{k}" for k in ks], *[f"i2t@{k}" for k in ks], "difficulty"]
    tables = []
    for name, result in payload["sets"].items():
        rows = []
        for coll, m in [*result["collections"].items(), ("(pooled)", result["pooled"])]:
            rows.append([coll, str(m["items"]), *[f"{m[f't2i_r{k}']:.3f}" for k in ks],
                         *[f"{m[f'i2t_r{k}']:.3f}" for k in ks], f"{m.get('difficulty', float('nan')):.3f}"])
        tables.append((name, header, rows))
        partial = result.get("partial") or {}
        if partial.get("pooled"):
            p_header = ["collection", "attributes", "queries", *[f"any@{k}" for k in PARTIAL_KS],
                        *[f"this@{k}" for k in PARTIAL_KS]]
            p_rows = []
            for coll, by_size in [*partial["collections"].items(), ("(pooled)", partial["pooled"])]:
                for size, m in by_size.items():
                    p_rows.append([coll, size, str(m["queries"]), *[f"{m[f'any_r{k}']:.3f}" for k in PARTIAL_KS],
                                   *[f"{m[f'this_r{k}']:.3f}" for k in PARTIAL_KS]])
            tables.append((f"{name}, partial-attribute queries (text->image)", p_header, p_rows))
    return tables


# -------------------------------------------------------------------------------------------------- partial queries

PARTIAL_KS = (1, 5, 10)
Ranker = Callable[[list[str]], np.ndarray]


def embedding_ranker(embed_texts: Callable[[list[str]], np.ndarray], image_emb: np.ndarray, k: int = 10) -> Ranker:
    """A `rank` function for `partial_recall` from a text embedder and the gallery's image embeddings
    (inner product, best first)."""
    k = min(k, len(image_emb))

    def rank(texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), k), np.int64)
        for a in range(0, len(texts), 1024):
            scores = embed_texts(texts[a:a + 1024]) @ image_emb.T
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else \
                np.tile(np.arange(scores.shape[1]), (len(scores), 1))
            order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable")
            out[a:a + len(scores)] = np.take_along_axis(top, order, 1)
        return out

    return rank


def partial_recall(queries: Sequence[PartialQuery], rank: Ranker, groups: np.ndarray | None = None,
                   ks: Sequence[int] = PARTIAL_KS, ids: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Recall@K of partial-attribute queries (from `curata.search.captions.partial_queries`), scored two ways.

    `rank(query_texts: list[str]) -> np.ndarray` of shape (len(query_texts), >= max(ks)): for each
    query, gallery item indices best first (the same row numbering as the captions the queries were
    built from; -1 pads a short list). With `ids` (the item id of each row), `rank` may return item
    ids instead (e.g. `curata.search.hybrid.ranker(searcher, mode, k)`); ids not in `ids` count as
    misses. Any search can be scored this way: the joint space (`embedding_ranker`), a hybrid text +
    vector search, a CLIP plug-in.

    - ``any_r{k}``: a hit when any item holding all the query's attributes ranks in the top K;
    - ``this_r{k}``: a hit when the token the query was built from (or an identical image: `groups`,
      one id per item, equal for identical images) ranks in the top K.

    Returns {"1": {...}, "2": {...}, "3": {...}, "all": {...}} (one entry per query size present),
    each with `queries` and the recall values."""
    if not queries:
        return {}
    ranked = rank([q.text for q in queries])
    if ids is not None:
        position = {str(i): n for n, i in enumerate(ids)}
        kmax = max(ks)
        ranked = np.array([[position.get(str(x), -1) for x in list(r)[:kmax]] + [-1] * (kmax - len(list(r)[:kmax]))
                           for r in ranked], dtype=np.int64).reshape(len(queries), kmax)
    ranked = np.asarray(ranked)
    kmax = max(ks)
    ranked = ranked[:, :kmax]
    n_items = int(max(ranked.max(initial=-1), max(q.relevant.max(initial=q.owner) for q in queries)) + 1)
    groups = np.arange(n_items) if groups is None else np.asarray(groups)
    first_any = np.full(len(queries), kmax, np.int64)
    first_this = np.full(len(queries), kmax, np.int64)
    for i, q in enumerate(queries):
        row = ranked[i]
        valid = row >= 0
        hit_any = np.isin(row, q.relevant) & valid
        hit_this = valid & (groups[np.where(valid, row, 0)] == groups[q.owner])
        if hit_any.any():
            first_any[i] = int(np.argmax(hit_any))
        if hit_this.any():
            first_this[i] = int(np.argmax(hit_this))
    sizes = np.array([q.size for q in queries])
    out: dict[str, dict[str, float]] = {}
    for label, mask in [*[(str(s), sizes == s) for s in sorted(set(sizes.tolist()))], ("all", sizes > 0)]:
        out[label] = {"queries": int(mask.sum()),
                      **{f"any_r{k}": round(float((first_any[mask] < k).mean()), 4) for k in ks},
                      **{f"this_r{k}": round(float((first_this[mask] < k).mean()), 4) for k in ks}}
    return out


def partial_evaluation(captions: Sequence[ItemCaptions], image_emb: np.ndarray,
                       embed_texts: Callable[[list[str]], np.ndarray], groups: np.ndarray, collections: np.ndarray,
                       ks: Sequence[int] = PARTIAL_KS, seed: int = 0, max_per_size: int | None = 500
                       ) -> dict[str, Any]:
    """Partial-attribute recall pooled (gallery = every item) and within each collection (gallery = its
    items), for an embedding search. Returns {"pooled": partial_recall(...), "collections": {name: ...}}."""
    captions = list(captions)
    groups = np.asarray(groups)
    queries = partial_queries(captions, seed=seed, max_per_size=max_per_size)
    out: dict[str, Any] = {"pooled": partial_recall(queries, embedding_ranker(embed_texts, image_emb, max(ks)),
                                                    groups, ks), "collections": {}}
    for name in sorted(set(collections)):
        rows = np.flatnonzero(collections == name)
        sub = partial_queries([captions[r] for r in rows], seed=seed, max_per_size=max_per_size)
        if sub:
            out["collections"][str(name)] = partial_recall(
                sub, embedding_ranker(embed_texts, image_emb[rows], max(ks)), groups[rows], ks)
    return out
