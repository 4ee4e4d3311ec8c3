"""Datasets for lstmbench: bundled series and text, user CSV files, synthetic data.

Everything here loads without network access and depends only on numpy.
"""

from lstmbench.data.series import (
    BUNDLED_SERIES,
    Series,
    Standardizer,
    WindowedDataset,
    WindowSplit,
    future_index,
    index_description,
    load_series,
    make_windows,
    read_csv_series,
)
from lstmbench.data.synthetic import anbn, noisy_sine_mixture
from lstmbench.data.text import (
    BUNDLED_TEXTS,
    UNK,
    TextDataset,
    TextSplit,
    Vocabulary,
    load_text,
    make_text_dataset,
)

__all__ = [
    "BUNDLED_SERIES",
    "BUNDLED_TEXTS",
    "UNK",
    "Series",
    "Standardizer",
    "TextDataset",
    "TextSplit",
    "Vocabulary",
    "WindowSplit",
    "WindowedDataset",
    "anbn",
    "future_index",
    "index_description",
    "load_series",
    "load_text",
    "make_text_dataset",
    "make_windows",
    "noisy_sine_mixture",
    "read_csv_series",
]
