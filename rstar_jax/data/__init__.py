"""Training data: Q-annotated tree reading, SFT/PPM extraction (DESIGN §1.3), rStar-format I/O, grain pipelines."""

from rstar_jax.data.extract import (ExtractionStats, PairConfig, SftConfig, edit_distance, extract_files,
                                    final_answer_pairs, ppm_pairs, sft_records, step_pairs)
from rstar_jax.data.formats import (SFT_PROMPT_TEMPLATE, DataFormatError, PpmPair, SftRecord, read_ppm_pairs,
                                    read_sft_records, sft_prompt, write_ppm_pairs, write_sft_records)
from rstar_jax.data.pipeline import NoExamplesError, Pipeline, PipelineConfig, ppm_pipeline, sft_pipeline
from rstar_jax.data.trees import Node, Tree, TreeFormatError, read_trees, tree_from_dict

__all__ = [
    "ExtractionStats", "PairConfig", "SftConfig", "edit_distance", "extract_files", "final_answer_pairs",
    "ppm_pairs", "sft_records", "step_pairs", "SFT_PROMPT_TEMPLATE", "DataFormatError", "PpmPair", "SftRecord",
    "read_ppm_pairs", "read_sft_records", "sft_prompt", "write_ppm_pairs", "write_sft_records", "NoExamplesError",
    "Pipeline", "PipelineConfig", "ppm_pipeline", "sft_pipeline", "Node", "Tree", "TreeFormatError", "read_trees",
    "tree_from_dict",
]
