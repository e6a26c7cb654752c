"""Unsupervised analysis: clustering with scores and maps, readable cluster names, topic models, tag
themes and near-duplicate detection. Matrix-level functions take arrays; `runs` works on a workspace."""

from curata.cluster.core import (
    METHODS,
    REDUCTIONS,
    ClusterInputError,
    ClusterResult,
    KCurve,
    choose_k,
    cluster,
    plot_k_curve,
    reduce,
    score,
)
from curata.cluster.duplicates import (
    DuplicateGroups,
    embedding_duplicates,
    hamming_pairs,
    image_duplicates,
    phash_groups,
    phash_image,
)
from curata.cluster.maps import embed_2d, interactive_map, plot_map, write_assignments
from curata.cluster.naming import ClusterName, distinctive_tags, distinctive_terms, dominant_colours, name_clusters
from curata.cluster.runs import cluster_workspace, duplicates_workspace, themes_workspace
from curata.cluster.themes import TagThemes, Theme, humanise, tag_themes
from curata.cluster.topics import TopicModel, topics

__all__ = [
    "METHODS",
    "REDUCTIONS",
    "ClusterInputError",
    "ClusterName",
    "ClusterResult",
    "DuplicateGroups",
    "KCurve",
    "TagThemes",
    "Theme",
    "TopicModel",
    "choose_k",
    "cluster",
    "cluster_workspace",
    "distinctive_tags",
    "distinctive_terms",
    "dominant_colours",
    "duplicates_workspace",
    "embed_2d",
    "embedding_duplicates",
    "hamming_pairs",
    "humanise",
    "image_duplicates",
    "interactive_map",
    "name_clusters",
    "phash_groups",
    "phash_image",
    "plot_k_curve",
    "plot_map",
    "reduce",
    "score",
    "tag_themes",
    "themes_workspace",
    "topics",
    "write_assignments",
]
