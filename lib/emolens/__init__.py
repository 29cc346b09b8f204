"""emolens: emotion vectors in open language models, after Sofroniew et al. (2026).

Importing the package is cheap: heavy dependencies (torch, transformers, TransformerLens) load only in the
submodules that need them, so the data tools run with the standard library alone.
"""

__version__ = "0.1.0"
