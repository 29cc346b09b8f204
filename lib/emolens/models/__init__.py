"""Models: the embedded offline models, any hub model by name, and tiny random models for tests."""

from emolens.models.embedded import DEFAULT_MODEL, EMBEDDED, EmbeddedModel, fetch_gguf
from emolens.models.load import load_model
from emolens.models.spec import Model, ModelError, ModelSpec, default_probe_layer
from emolens.models.tiny import ARCHS, tiny_model

__all__ = ["ARCHS", "DEFAULT_MODEL", "EMBEDDED", "EmbeddedModel", "Model", "ModelError", "ModelSpec", "default_probe_layer",
           "fetch_gguf", "load_model", "tiny_model"]
