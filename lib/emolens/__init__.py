"""emolens: emotion vectors in open language models, after Sofroniew et al. (2026).

Importing the package is cheap: heavy dependencies (torch, transformers, TransformerLens) load only in the
submodules that need them, so the data tools run with the standard library alone.

Where the paper's parts live (method at the top level, per-section analyses in ``emolens.analyses``):

=====================================  ==============================  ==========================================
paper                                  notebook                        modules
=====================================  ==============================  ==========================================
2.1 stories, neutral dialogues         01_dataset_construction         data (records, check, plan, intake,
                                                                       describe, blind, generation, ratings)
3.1 the recipe                         02_extract_emotion_vectors      activations, fastpath, vectors
3.2-3.3 validation, Table 1, Figs 2-3  03_validate_vectors             readout, analyses.validation
5 geometry, Figs 5-9                   04_geometry                     analyses.geometry, analyses.narrative
7.1-7.2 preferences, steering          05 (to come)                    interventions, generate
models, caches, figures, statistics    every notebook                  models, cache, provenance, stats,
                                                                       plotting, results, display, defaults
=====================================  ==============================  ==========================================

Entry points: ``emolens.models.load_model``, ``emolens.vectors.load_or_build`` / ``emotion_vectors`` /
``EmotionVectors`` (``.steer``, ``.ablate``, ``.score_texts``), ``emolens.readout`` (readouts and the logit
lens), ``emolens.interventions`` (``steering``, ``ablation``).
"""

__version__ = "0.1.0"
