"""Architectures behind one registry: `build_model(arch, num_classes=..., defense=..., activation=...)`.

Every model maps images in [0, 1] (N, 3, H, W) to logits (N, K); `features(x)` gives the pooled
penultimate representation, `classifier_layer()` the final Linear. Defense sites go into the
`nn.Identity` slots (`site`, `pre_site`, `final_site`, VGG `slots`) without changing state_dict keys.
"""

from robustact.models import activations, preact_resnet, resnet, vgg, wideresnet  # noqa: F401  (registers them)
from robustact.models.layers import (
    ImageClassifier,
    list_activations,
    make_activation,
    register_activation,
)
from robustact.models.registry import apply_defense, build_model, list_models, register_model

__all__ = [
    "ImageClassifier",
    "apply_defense",
    "build_model",
    "list_activations",
    "list_models",
    "make_activation",
    "register_activation",
    "register_model",
]
