"""Models: built-in architectures, checkpoint formats, safe file reading and loading.

Every model maps a batch ``x`` of shape ``(B, C, H, W)`` with values in ``[0, 1]`` to logits of
shape ``(B, K)``. Model files are read with ``torch.load(weights_only=True)``: loading a model
never runs Python code from the file.

- :mod:`.architectures` -- the built-in networks, each behind its normalization layer;
- :mod:`.factory` -- user architectures given as ``package.module:factory``;
- :mod:`.checkpoints` -- ancer's checkpoint format, Cohen et al.'s, plain state dicts;
- :mod:`.files` -- what kind a model file is, and weights-only loading with one-line errors;
- :mod:`.loading` -- :func:`load_model`, which takes any of them;
- :mod:`.checks` -- :func:`check_per_input`: is the base classifier a function of one input?
"""

from ancer_cli.models.architectures import (
    ARCHITECTURES,
    Normalize,
    build_model,
    check_architecture,
    is_factory_arch,
)
from ancer_cli.models.checkpoints import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_KEYS,
    COHEN_ARCHITECTURES,
    read_checkpoint,
    save_checkpoint,
)
from ancer_cli.models.checks import BatchCheck, check_inputs, check_per_input
from ancer_cli.models.files import MODEL_KINDS
from ancer_cli.models.loading import ExportedModule, LoadedModel, load_model

__all__ = [
    "ARCHITECTURES",
    "BatchCheck",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_KEYS",
    "COHEN_ARCHITECTURES",
    "MODEL_KINDS",
    "ExportedModule",
    "LoadedModel",
    "Normalize",
    "build_model",
    "check_architecture",
    "check_inputs",
    "check_per_input",
    "is_factory_arch",
    "load_model",
    "read_checkpoint",
    "save_checkpoint",
]
