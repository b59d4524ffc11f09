"""Data for prunekit's demo, examples and benchmarks (numpy only; torchvision only to download)."""

from prunekit.data.datasets import DATASETS, Dataset, DatasetNotFound, load, synthetic
from prunekit.data.idx import read_idx

__all__ = ["DATASETS", "Dataset", "DatasetNotFound", "load", "synthetic", "read_idx"]
