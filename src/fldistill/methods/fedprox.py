"""FedProx (Li et al. 2020): FedAvg plus a proximal term mu/2 ||w - w_global||^2."""

from __future__ import annotations

from typing import Any

from fldistill.methods import register
from fldistill.methods.fedavg import FedAvg
from fldistill.methods.params import FedProxParams


@register
class FedProx(FedAvg):
    name = "fedprox"
    params: FedProxParams

    def objective(self) -> tuple[str, dict[str, Any]]:
        return "fedprox", {"mu": self.params.mu}
