"""Quality of a collection: labels that look wrong, items unlike the rest of their class, and
near-duplicates, listed with thumbnails in one HTML report."""

from curata.quality.labels import class_outliers, suspicious_labels
from curata.quality.runs import quality_workspace

__all__ = ["class_outliers", "quality_workspace", "suspicious_labels"]
