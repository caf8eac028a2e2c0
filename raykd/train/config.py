"""Typed stage configuration, validated when loaded.

One :class:`StageConfig` describes one run of one stage (``teacher | sft | student | kd``).
Files are YAML or JSON; ``key.path=value`` overrides are applied before validation. Unknown
keys and bad values fail with the file, the line and the key path, before any training starts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from raykd.errors import ConfigError
from raykd.kinds import STAGE_KINDS

# raykd.kinds.StageKind's values. type: ignore: mypy accepts only literal values in a Literal,
# not a tuple built at import; pydantic validates against it at runtime.
StageKind = Literal[STAGE_KINDS]  # type: ignore[valid-type]


class _CanonicalWeights(Mapping[str, float]):
    """Each registered method's published weight (``KDMethod.canonical_weight``), read from the
    KD registry when asked, so a method's file is the one place its weight is written."""

    def _weights(self) -> dict[str, float]:
        from raykd.distill import available_kd_methods, canonical_kd_weight

        return {m: canonical_kd_weight(m) for m in available_kd_methods()}

    def __getitem__(self, method: str) -> float:
        return self._weights()[method]

    def __iter__(self) -> Iterator[str]:
        return iter(self._weights())

    def __len__(self) -> int:
        return len(self._weights())


CANONICAL_KD_WEIGHTS: Mapping[str, float] = _CanonicalWeights()


def _no_bool(value: Any) -> Any:
    # pydantic's lax mode reads true as 1: `optim.epochs=true` would train one epoch.
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got the boolean {value}")
    return value


Count = Annotated[int, BeforeValidator(_no_bool)]
MAX_DEPTH = 64  # deeper than any published cascade; beyond it the network would not fit anyway


class _Loader(yaml.SafeLoader):
    """YAML without the 1.1 surprises: ``0401`` stays the string '0401' (not octal 257)."""


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:int"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.copy().items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*))$"), list("-+0123456789")
)


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MaskConfig(_Strict):
    kind: Literal["file", "cartesian", "fastmri_random", "fastmri_equispaced"] = Field(
        "cartesian",
        description="file | cartesian (the paper's) | fastmri_random / fastmri_equispaced "
        "(fastMRI's line masks, raykd.data.fastmri_masks)",
    )
    path: str | None = None
    acceleration: float = Field(4.0, ge=1.0)
    seed: Count = 0
    num_low: Count = Field(10, ge=0)
    per_volume: bool = False
    allow_full: bool = Field(
        False, description="allow a mask sampling every point (a trivial task; off by default)"
    )
    center_fraction: float | None = Field(
        None, gt=0, lt=1, description="fastmri_*: fully sampled centre (default 4x 0.08, 8x 0.04)"
    )
    per_epoch: bool = Field(
        False,
        description="fastmri_*: a fresh (seeded) training mask every epoch; validation and test "
        "keep one mask per volume",
    )

    @model_validator(mode="after")
    def _path_for_file(self) -> MaskConfig:
        if self.kind == "file" and not self.path:
            raise ValueError("mask.kind 'file' needs mask.path (an .npy [H, W] mask)")
        if self.per_epoch and not self.kind.startswith("fastmri"):
            raise ValueError("mask.per_epoch is for the fastmri_* mask kinds")
        return self


class SRConfig(_Strict):
    """Super-resolution inputs made from the high-resolution slices (paper Appendix B)."""

    scale: int = Field(2, ge=2, description="downsampling factor per axis (x2, x4)")
    degradation: Literal["kspace", "image"] = Field(
        "kspace",
        description="'kspace': keep the central 1/scale of k-space per axis (what a scanner "
        "acquires at lower resolution), zero-filled back; 'image': area-downsample in the image "
        "domain, bicubic back up",
    )


class DataConfig(_Strict):
    source: str = Field(
        "mni152",
        description="'mni152' (built in), 'sunnybrook' (RAYKD_SHARED_DATA), or a folder of h5",
    )
    train: list[str] | None = None
    val: list[str] | None = None
    test: list[str] | None = None
    size: tuple[int, int] = (240, 240)
    mask: MaskConfig = MaskConfig()
    batch_size: Count = Field(
        4, ge=1, description="the global batch: DDP ranks take batch_size / world_size each"
    )
    num_workers: Count = Field(0, ge=0)
    max_slices_per_volume: Count | None = Field(None, ge=1)
    test_slices: Count | None = Field(
        None,
        ge=1,
        description="slices per test volume (evenly spaced); None: all of them, whatever "
        "max_slices_per_volume thins for training and validation",
    )
    sr: SRConfig | None = Field(None, description="set for the super-resolution task")
    complex: bool = Field(
        False,
        description="complex data: read each volume's complex images ('cimage'), undersample "
        "their measured complex k-space, train two-channel (real, imag) networks; metrics on "
        "the magnitude (raykd.data.complex)",
    )
    kspace: Literal["simulated", "measured"] = Field(
        "simulated",
        description="'simulated': k-space re-simulated from the (cropped) images, the paper's "
        "setting; 'measured': fastMRI single-coil volumes on their full measured grid (raykd "
        "prepare fastmri --kspace measured), masks over the file's phase-encode width, size = "
        "the scored centre crop (fastMRI's 320x320); needs complex: true and a fastmri_* mask",
    )

    @model_validator(mode="after")
    def _size_positive(self) -> DataConfig:
        if min(self.size) < 8:
            raise ValueError(f"size must be at least 8x8, got {self.size}")
        if self.kspace == "measured" and not (
            self.complex and self.mask.kind.startswith("fastmri")
        ):
            raise ValueError(
                "kspace 'measured' needs complex: true and a fastmri_random/fastmri_equispaced "
                "mask (the file's own complex k-space, fastMRI's masks)"
            )
        if self.mask.per_epoch and self.num_workers:
            raise ValueError(
                "mask.per_epoch needs num_workers 0 (DataLoader workers keep their own copy of "
                "the dataset and would not see the new epoch's masks)"
            )
        return self


class ModelConfig(_Strict):
    arch: Literal["dccnn", "dcunet", "vdsr"] = "dccnn"
    depth: Count = Field(
        5,
        ge=2,
        le=MAX_DEPTH,
        description="dccnn: conv layers per cascade (n in DnCm); dcunet: U-Net levels; "
        "vdsr: conv layers in total",
    )
    cascades: Count = Field(
        5,
        ge=1,
        le=MAX_DEPTH,
        description="dccnn/dcunet: cascades (m in DnCm); vdsr: SFT blocks of layers",
    )
    channels: Count = Field(32, ge=1, le=4096)
    residual: bool = True


class OptimConfig(_Strict):
    epochs: Count = Field(150, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    step_size: Count = Field(40, ge=1)
    gamma: float = Field(0.1, gt=0, le=1)
    max_steps_per_epoch: Count | None = Field(None, ge=1)


class BalanceConfig(_Strict):
    """Calibrated weight of an auxiliary term (KD, or SFT imitation), set before training.

    Over the first ``batches`` training batches (no gradient, averaged over DDP ranks) the mean
    reconstruction term R and the mean raw auxiliary term A are measured; the weight becomes
    ``ratio · R / A``, so that at the start the weighted term is ``ratio`` × reconstruction.
    The stage identity holds ``ratio`` and ``batches``, not the resolved number.
    """

    ratio: float = Field(gt=0, description="r: weighted term = r × reconstruction at start")
    batches: int = Field(4, ge=1, description="training batches measured before training")


# Batches measured before training when no term is calibrated (the step-0 ratio metrics).
MEASURE_BATCHES = 4


class SFTConfig(_Strict):
    w_s: float = Field(1.0, ge=0)
    w_imit: float = Field(1.0, ge=0)
    balance: BalanceConfig | None = Field(
        None, description="calibrate w_imit from the data instead of using the fixed w_imit"
    )


class KDConfig(_Strict):
    method: str = "at"
    weight: float | None = Field(None, ge=0, description="w_kd; default: canonical for method")
    balance: BalanceConfig | None = Field(
        None, description="calibrate w_kd from the data (exclusive with kd.weight)"
    )
    output_weight: float = Field(0.0, ge=0, description="w_out · L1(student, teacher output)")
    teacher_taps: list[str] | None = None
    student_taps: list[str] | None = None
    options: dict[str, float | int | str] = {}
    init: Literal["random", "sft"] = "random"

    @model_validator(mode="after")
    def _one_weight_rule(self) -> KDConfig:
        if self.weight is not None and self.balance is not None:
            raise ValueError("set kd.weight (fixed) or kd.balance (calibrated), not both")
        return self

    @property
    def resolved_weight(self) -> float:
        """The fixed weight; with ``balance`` the starting value that calibration replaces."""
        return (
            self.weight if self.weight is not None else CANONICAL_KD_WEIGHTS.get(self.method, 1.0)
        )


class StageConfig(_Strict):
    kind: StageKind
    name: str | None = None
    seed: Count = 42
    data: DataConfig = DataConfig()
    teacher: ModelConfig = ModelConfig(depth=5)
    student: ModelConfig = ModelConfig(depth=3)
    optim: OptimConfig = OptimConfig()
    sft: SFTConfig = SFTConfig()
    kd: KDConfig = KDConfig()
    teacher_checkpoint: str | None = Field(
        None, description="kd: checkpoint of the frozen teacher (plain teacher or SFT run)"
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 autocast on CUDA GPUs with native bf16 (fp16 + GradScaler on "
        "older GPUs) and on AMX / AVX512-BF16 CPUs, fp32 elsewhere (raykd.train.precision); "
        "the k-space/DC path is always fp32",
    )
    channels_last: bool | Literal["auto"] = Field(
        "auto", description="auto: channels-last with bf16/fp16, NCHW with fp32 (slower there)"
    )
    compile: bool = False
    device: str = "auto"
    output_dir: str = "runs/stage"
    resume: bool = True
    progress: bool = True

    @model_validator(mode="after")
    def _check_kind(self) -> StageConfig:
        if self.kind == "kd":
            from raykd.distill import available_kd_methods

            if self.kd.method not in available_kd_methods():
                raise ValueError(
                    f"kd.method '{self.kd.method}' is unknown; expected one of "
                    f"{available_kd_methods()}"
                )
            if not self.teacher_checkpoint:
                raise ValueError("kind 'kd' needs teacher_checkpoint (a teacher or SFT run)")
        if self.kind in ("sft", "kd") and self.teacher.cascades != self.student.cascades:
            raise ValueError("teacher.cascades and student.cascades must match for sft/kd")
        return self

    @property
    def task(self) -> str:
        """'sr' (super-resolution) when the data section asks for it, else 'recon'."""
        return "sr" if self.data.sr is not None else "recon"

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{k}' is not a section")
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=3`` → (``a.b``, 3); the value is parsed as YAML (numbers, lists, booleans)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected KEY=VALUE, e.g. optim.epochs=10")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), yaml_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML ({exc})") from exc


def _line_of(path: Path, keys: tuple) -> int | None:
    """Line (1-based) of a key path in a YAML file, for error messages."""
    try:
        node = yaml.compose(path.read_text(), Loader=_Loader)
    except Exception:
        return None
    line = None
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            break
        for k_node, v_node in node.value:
            if k_node.value == str(key):
                line, node = k_node.start_mark.line + 1, v_node
                break
        else:
            break
    return line


def format_validation_error(exc: ValidationError, source: str, path: Path | None = None) -> str:
    lines = [f"{source}: invalid configuration"]
    for err in exc.errors():
        keys = tuple(err["loc"])
        key = ".".join(str(k) for k in keys) or "(top level)"
        where = ""
        if path is not None and keys and (ln := _line_of(path, keys)) is not None:
            where = f" (line {ln})"
        got = err.get("input")
        got_s = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  - {key}{where}: {err['msg']}{got_s}")
    return "\n".join(lines)


def validate_config(data: dict[str, Any], source: str = "config", path: Path | None = None):
    try:
        return StageConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, path)) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> StageConfig:
    """Load a YAML/JSON stage config, apply ``KEY=VALUE`` overrides and validate."""
    data: dict[str, Any] = {}
    file_path = None
    if path is not None:
        file_path = Path(path)
        if not file_path.is_file():
            raise ConfigError(f"config file {file_path}: not found")
        text = file_path.read_text()
        try:
            data = (json.loads(text) if file_path.suffix == ".json" else yaml_load(text)) or {}
        except (yaml.YAMLError, json.JSONDecodeError) as exc:
            raise ConfigError(f"config file {file_path}: cannot be parsed ({exc})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config file {file_path}: expected a mapping at the top level")
    for text in overrides or []:
        key, value = parse_override(text)
        _set_path(data, key, value)
    return validate_config(data, str(file_path or "config"), file_path)


def save_config(cfg: StageConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
