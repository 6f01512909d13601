"""Interleaved text/image data: the schema, image reading, pre-tokenization and public-dataset converters."""

from .bootstrap import BootstrapConfig, bootstrap_dataset, load_bootstrapped, run_bootstrap, split_steps
from .converters import (
    convert_m3cot,
    convert_omni_bench,
    convert_zebra_cot,
    m3cot_row_to_interleaved,
    omni_bench_row_to_interleaved,
    zebra_cot_row_to_interleaved,
)
from .images import load_image, resolve_image_path
from .lengths import drop_overlong_rows
from .loading import (
    DATASET_FORMATS,
    FORMAT_COLUMNS,
    check_dataset_source,
    check_format_columns,
    detect_format,
    load_any_dataset,
    select_split,
    to_interleaved,
)
from .pretokenize import pretokenize_images
from .pretokenized import validate_pretokenized_rows
from .references import REFERENCE_COLUMN, add_reference_images, reference_images_from_completion
from .report import SkipReport
from .schema import (
    DatasetFormatError,
    InterleavedDataError,
    check_answer,
    check_codes,
    check_column_names,
    image_part,
    interleaved_features,
    normalize_parts,
    part_list_feature,
    text_part,
)


__all__ = [
    "BootstrapConfig",
    "DATASET_FORMATS",
    "FORMAT_COLUMNS",
    "DatasetFormatError",
    "InterleavedDataError",
    "REFERENCE_COLUMN",
    "SkipReport",
    "add_reference_images",
    "bootstrap_dataset",
    "check_answer",
    "check_codes",
    "check_column_names",
    "check_dataset_source",
    "check_format_columns",
    "convert_m3cot",
    "convert_omni_bench",
    "convert_zebra_cot",
    "detect_format",
    "drop_overlong_rows",
    "image_part",
    "interleaved_features",
    "load_any_dataset",
    "load_bootstrapped",
    "load_image",
    "m3cot_row_to_interleaved",
    "normalize_parts",
    "omni_bench_row_to_interleaved",
    "part_list_feature",
    "pretokenize_images",
    "reference_images_from_completion",
    "resolve_image_path",
    "run_bootstrap",
    "select_split",
    "split_steps",
    "text_part",
    "to_interleaved",
    "validate_pretokenized_rows",
    "zebra_cot_row_to_interleaved",
]
