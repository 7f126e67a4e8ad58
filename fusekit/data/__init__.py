"""Datasets and feature encoding: Census-Income, generic CSV/Parquet, FeatureSpec, splits."""
from .dataset import Split
from .features import CategoricalFeature, DenseFeature, FeatureSpec
from .tabular import TabularDataset, load_dataset

__all__ = ["CategoricalFeature", "DenseFeature", "FeatureSpec", "Split", "TabularDataset", "load_dataset"]
