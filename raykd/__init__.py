"""raykd: knowledge distillation for cascaded MRI reconstruction (SFT-KD-Recon) on Ray + MLflow."""

from raykd.errors import RaykdError

__all__ = ["RaykdError"]
__version__ = "0.1.0"
