"""Data sets, windows and session splits for archsweep.

Every data set becomes windows [N, T, F] with binary labels y [N] and a session id per
window, split by session into train, validation and test, and normalised with the train
split's per-feature mean and std. See the module docstrings of ``_builtin`` (the ``watch``
and ``epf`` data sets) and ``_files`` (the ``.npz``, CSV and Parquet formats).
"""

from __future__ import annotations

from search.data._options import DATA_HELP, add_data_arguments, data_spec_from_args
from search.data._spec import (
    BUILTIN_DATASETS,
    DataError,
    DataOptionError,
    Dataset,
    DataSpec,
    SplitArrays,
)
from search.data._split import load_dataset

__all__ = [
    "BUILTIN_DATASETS",
    "DATA_HELP",
    "DataError",
    "DataOptionError",
    "DataSpec",
    "Dataset",
    "SplitArrays",
    "add_data_arguments",
    "data_spec_from_args",
    "load_dataset",
]
