"""Datasets and feature encoding: the dataset registry, CSV/Parquet, FeatureSpec, splits."""
from fusekit.data.dataset import Split, TabularDataset
from fusekit.data.features import CategoricalFeature, DenseFeature, FeatureSpec
from fusekit.data.registry import DATASETS, load_dataset

__all__ = ["CategoricalFeature", "DATASETS", "DenseFeature", "FeatureSpec", "Split", "TabularDataset", "load_dataset"]
