"""robustact: activation-level adversarial defenses for CNNs — train, attack, analyse, reproduce.

The public names most scripts need live here; `docs/architecture.md` maps the packages behind them.
"""

__version__ = "0.1.0"

from robustact.data import load_dataset  # noqa: E402
from robustact.defenses import build_model  # noqa: E402

__all__ = ["__version__", "build_model", "load_dataset"]
