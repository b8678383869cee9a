"""The FGD paper's figures: unallocated GPU % (mean of 10 seeds), from the trace's README.

Keyed by our policy names; ``None`` where the paper gives no figure.
"""

from __future__ import annotations

from typing import Final

# Policy names here -> the paper's names.
PAPER_NAMES: Final = {"fgd": "FGD", "bestfit": "BestFit", "gpupacking": "GpuPacking", "random": "Random"}

# At 100% arrived demand, per trace variant.
AT_100: Final[dict[str, dict[str, float]]] = {
    "default": {"fgd": 4.77, "bestfit": 7.14, "gpupacking": 8.22, "random": 13.70},
    "cpu050": {"fgd": 5.00, "bestfit": 6.44, "gpupacking": 6.54, "random": 10.98},
    "cpu100": {"fgd": 4.79, "bestfit": 6.74, "gpupacking": 7.50, "random": 12.56},
    "cpu200": {"fgd": 5.18, "bestfit": 7.85, "gpupacking": 10.02, "random": 16.97},
    "cpu250": {"fgd": 6.80, "bestfit": 8.79, "gpupacking": 11.95, "random": 20.00},
    "gpushare40": {"fgd": 6.04, "bestfit": 8.56, "gpupacking": 10.23, "random": 15.14},
    "gpushare60": {"fgd": 8.75, "bestfit": 10.94, "gpupacking": 12.85, "random": 17.19},
    "gpushare80": {"fgd": 10.92, "bestfit": 13.34, "gpupacking": 15.35, "random": 19.38},
    "gpushare100": {"fgd": 13.36, "bestfit": 15.38, "gpupacking": 17.87, "random": 21.10},
}

# At 130% arrived demand: the default trace only.
AT_130: Final[dict[str, dict[str, float]]] = {
    "default": {"fgd": 4.61, "bestfit": 6.92, "gpupacking": 8.00, "random": 12.53},
}


def figure(variant: str, policy: str, at: int) -> float | None:
    table = AT_100 if at == 100 else AT_130 if at == 130 else {}
    return table.get(variant, {}).get(policy)
