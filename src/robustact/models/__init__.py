"""Architectures behind one registry: `create_model(arch, num_classes=..., activation=..., **options)`.

Every model maps images in [0, 1] (N, 3, H, W) to logits (N, K); `features(x)` gives the pooled
penultimate representation, `classifier_layer()` the final Linear. Defense sites go into the
`nn.Identity` slots (`site`, `pre_site`, `final_site`, VGG `slots`) without changing state_dict keys;
`robustact.build_model` (one level up, in `robustact.defenses`) puts them there.
"""

from robustact.models import (  # noqa: F401  (registers them)
    dm_wideresnet,
    preact_resnet,
    resnet,
    sparta,
    vgg,
    wideresnet,
)
from robustact.models.activations import (
    LearnableActivation,
    PSSiLU,
    activation_spec,
    learnable_activations,
    list_activations,
    make_activation,
    register_activation,
)
from robustact.models.layers import ImageClassifier
from robustact.models.registry import arch_family, check_arch_kwargs, create_model, list_models, register_model
from robustact.models.sparta import Sparta, transfer_activations

__all__ = [
    "ImageClassifier",
    "LearnableActivation",
    "PSSiLU",
    "Sparta",
    "activation_spec",
    "arch_family",
    "check_arch_kwargs",
    "create_model",
    "learnable_activations",
    "list_activations",
    "list_models",
    "make_activation",
    "register_activation",
    "register_model",
    "transfer_activations",
]
