"""fldistill: federated learning on non-IID clients with distillation and clustering."""

__version__ = "0.1.0"
