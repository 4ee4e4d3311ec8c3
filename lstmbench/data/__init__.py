"""Datasets for lstmbench: bundled series and text, user CSV files, synthetic data.

Everything here loads without network access and depends only on numpy.
"""

from lstmbench.data.series import (
    BUNDLED_SERIES,
    Series,
    Spacing,
    Standardizer,
    WindowedDataset,
    WindowSplit,
    TARGET_TRANSFORMS,
    default_target,
    detect_season,
    future_index,
    index_description,
    index_labels,
    index_spacing,
    load_series,
    make_windows,
    model_values,
    read_csv_series,
)
from lstmbench.data.panel import make_panel_windows, read_csv_panel
from lstmbench.data.synthetic import anbn, noisy_sine_mixture
from lstmbench.data.text import (
    BUNDLED_TEXTS,
    EOR,
    UNK,
    TextDataset,
    TextSplit,
    Vocabulary,
    load_text,
    make_line_dataset,
    make_stream_dataset,
    make_text_dataset,
)

__all__ = [
    "BUNDLED_SERIES",
    "BUNDLED_TEXTS",
    "EOR",
    "UNK",
    "Series",
    "Spacing",
    "Standardizer",
    "TARGET_TRANSFORMS",
    "TextDataset",
    "TextSplit",
    "Vocabulary",
    "WindowSplit",
    "WindowedDataset",
    "anbn",
    "default_target",
    "detect_season",
    "future_index",
    "index_description",
    "index_labels",
    "index_spacing",
    "load_series",
    "load_text",
    "make_line_dataset",
    "make_panel_windows",
    "make_stream_dataset",
    "make_text_dataset",
    "make_windows",
    "model_values",
    "noisy_sine_mixture",
    "read_csv_panel",
    "read_csv_series",
]
