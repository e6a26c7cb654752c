"""Keywords and a one-sentence description for an image, from the models a workspace already has.

`Describer.open(workspace)` gathers the sources once (the newest tag and collection bundles, the
zero-label colour namer, the nearest neighbours in image-embedding space, optionally a CLIP plug-in to
rerank); `describe_items` / `describe_images` return ranked keywords and a sentence;
`evaluate_keywords` measures precision@k / recall@k against held-out tags.
"""

from curata.describe.describer import DescribeOptions, Describer
from curata.describe.evaluate import evaluate_keywords
from curata.describe.keywords import Keyword

__all__ = ["DescribeOptions", "Describer", "Keyword", "evaluate_keywords"]
