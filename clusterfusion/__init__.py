"""clusterfusion: fused CUDA kernels for batch-1 decoding of Pythia (GPT-NeoX) models.

The operators live in ``torch.ops.clusterfusion`` once this package is imported;
the functions below are their documented Python entry points. The HuggingFace
integration is in :mod:`clusterfusion.hf` (imported on demand, needs transformers),
and :class:`clusterfusion.Decoder` generates with a HuggingFace GPT-NeoX model.
"""

import torch  # noqa: F401  (loads libtorch before the extension)

try:
    from . import _C  # noqa: F401  (registers torch.ops.clusterfusion.*)
except ImportError as error:  # pragma: no cover - depends on the installation
    raise ImportError(
        "clusterfusion's compiled extension (clusterfusion._C) could not be loaded: "
        f"{error}. Build it with `pip install -e . --no-build-isolation` against the installed torch."
    ) from error
from . import _tuning, ops
from ._tuning import Tuning, current_tuning, tuning
from .decoder import Decoder
from .ops import *  # noqa: F401,F403  (the package exports the ops module's API)

__all__ = [*ops.__all__, *_tuning.__all__, "Decoder"]
__version__ = "0.1.0"
