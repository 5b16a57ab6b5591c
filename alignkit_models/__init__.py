"""alignkit_models: the DecAlign reference network, baselines, data, metrics, trainer and CLI.

    from alignkit_models import create_model, list_models
    model = create_model("decalign", input_dims={"text": 768, "audio": 5, "vision": 20})
"""

from alignkit import __version__
from alignkit_models.registry import create_model, list_models

__all__ = ["__version__", "create_model", "list_models"]
