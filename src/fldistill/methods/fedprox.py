"""FedProx (Li et al. 2020): FedAvg plus a proximal term mu/2 ||w - w_global||^2."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fldistill.methods import register
from fldistill.methods.fedavg import FedAvg


class FedProxParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mu: float = Field(0.01, ge=0, description="weight of the proximal term")


@register
class FedProx(FedAvg):
    name = "fedprox"
    description = "FedProx: FedAvg with a proximal term mu/2 ||w - w_global||^2 (params.mu, default 0.01)"
    Params = FedProxParams
    params: FedProxParams

    def objective(self) -> tuple[str, dict[str, Any]]:
        return "fedprox", {"mu": self.params.mu}
