"""Scale-out: the same extractors and bundles as the local engine, run inside Ray Data (`ray_engine`)."""

from curata.scale.ray_engine import compute_ray
from curata.scale.ray_predict import PredictRun, predict_ray
from curata.scale.runtime import ray_runtime

__all__ = ["PredictRun", "compute_ray", "predict_ray", "ray_runtime"]
