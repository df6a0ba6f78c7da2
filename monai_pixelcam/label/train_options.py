"""What a MONAI Label client may ask of a train job: an allow-list of options and bundle overrides, plain values.

A train request reaches ``monai.bundle.ConfigWorkflow``, whose config strings are code (``$...``), references
(``@...``) and macros (``%...``), and whose ``_target_`` names any class. A client of a shared server is
trusted to annotate, not to run code or to choose server paths, so a request is checked here, once, by the
server before it starts a job (:mod:`monai_pixelcam.label.server`) and again by the job itself
(:class:`~monai_pixelcam.label.train.PixelCAMTrainTask`):

* every key is one of :data:`REQUEST_OPTIONS` (or one MONAI Label adds itself, :data:`MONAILABEL_KEYS`), and
  every key of ``bundle_overrides`` one of :data:`BUNDLE_OVERRIDES`;
* every value is a plain JSON number, boolean, or short name (letters, digits, ``_ - . +``; so never a
  string starting with ``$``, ``@`` or ``%``, and never a path), or a short list of names, within the
  bounds given here (epochs, sizes and counts are bounded so that no request asks for unbounded work).

Anything else is refused with :class:`TrainOptionError`, whose message names the key. Paths the job needs
(``bundle_root``, ``datalist``, ``output_dir``) are the server's, set by the task after this check.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "TrainOptionError",
    "Option",
    "REQUEST_OPTIONS",
    "BUNDLE_OVERRIDES",
    "MONAILABEL_KEYS",
    "MODES",
    "check_train_request",
]

#: Train modes (see :class:`~monai_pixelcam.label.train.PixelCAMTrainTask`).
MODES = ("auto", "finetune", "full")
# a name: a class, method or layer name as the bundle spells them; nothing a config parser or a file system
# would read as more than a word
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+\-]{0,63}")
_DEVICE = re.compile(r"cpu|cuda(:[0-9]{1,2})?")
_GPUS = re.compile(r"all|[0-9]{1,2}(,[0-9]{1,2}){0,15}")
_MAX_LIST = 16


class TrainOptionError(ValueError):
    """A train request a client may not make; the message names the key and says what is allowed."""


@dataclass(frozen=True)
class Option:
    """One key a client may set: its type and bounds.

    Args:
        kind: ``"int"``, ``"float"``, ``"bool"``, ``"name"`` (a short word, see the module docstring),
            ``"names"`` (a list of at most 16 names) or ``"choice"`` (one of ``choices``).
        low, high: inclusive bounds of an ``int`` or ``float``.
        choices: the values of a ``choice``, or a compiled pattern the whole value must match.
    """

    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | re.Pattern | None = None

    def check(self, key: str, value: Any) -> Any:
        """The value, checked (ints given as ``2.0`` or ``"2"`` become ``2``). Raises TrainOptionError."""
        if self.kind in ("int", "float"):
            return self._number(key, value)
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            raise TrainOptionError(f"train option {key!r} must be true or false, got {value!r}")
        if self.kind == "names":
            if not isinstance(value, (list, tuple)) or not 0 < len(value) <= _MAX_LIST:
                raise TrainOptionError(f"train option {key!r} must be a list of 1 to {_MAX_LIST} names, got {value!r}")
            return [_name(f"{key}[{k}]", v) for k, v in enumerate(value)]
        if self.kind == "choice":
            pattern = self.choices
            ok = isinstance(value, str) and (
                pattern.fullmatch(value) if isinstance(pattern, re.Pattern) else value in pattern
            )
            if not ok:
                allowed = pattern.pattern if isinstance(pattern, re.Pattern) else list(pattern)
                raise TrainOptionError(f"train option {key!r} must be one of {allowed}, got {value!r}")
            return value
        return _name(key, value)

    def _number(self, key: str, value: Any) -> int | float:
        try:
            number = float(value) if not isinstance(value, bool) else float("nan")
        except (TypeError, ValueError, OverflowError):
            number = float("nan")
        whole = self.kind == "int"
        if number != number or (whole and not number.is_integer()) or number in (float("inf"), float("-inf")):
            what = "an integer" if whole else "a number"
            raise TrainOptionError(f"train option {key!r} must be {what}, got {value!r}")
        if (self.low is not None and number < self.low) or (self.high is not None and number > self.high):
            raise TrainOptionError(f"train option {key!r} must lie in [{self.low}, {self.high}], got {value!r}")
        return int(number) if whole else number


def _name(key: str, value: Any) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise TrainOptionError(
            f"train option {key!r} must be a name (letters, digits, '_', '-', '.', '+'; at most 64 characters, "
            f"not starting with '$', '@' or '%'), got {value!r}"
        )
    return value


_EPOCHS = Option("int", 1, 1000)
#: Options of a train request (``POST /train/pixelcam`` body), besides ``bundle_overrides``.
REQUEST_OPTIONS: dict[str, Option] = {
    "mode": Option("choice", choices=MODES),
    "source_epochs": _EPOCHS,
    "pixelcam_epochs": _EPOCHS,
    "image_size": Option("int", 16, 2048),
    "crop_size": Option("int", 16, 2048),
    "batch_size": Option("int", 1, 512),
    "val_interval": Option("int", 1, 1000),
    "num_workers": Option("int", 0, 32),
    "seed": Option("int", 0, 2**31 - 1),
    "valcl_fraction": Option("float", 0.0, 0.9),
    "valpx_per_class": Option("int", 1, 1000),
    "device": Option("choice", choices=_DEVICE),
}
#: Bundle config ids (``configs/train.json``) a request may override through ``bundle_overrides``.
BUNDLE_OVERRIDES: dict[str, Option] = {
    "encoder": Option("name"),
    "head": Option("name"),
    "cam_method": Option("name"),
    "cam_methods": Option("names"),
    "seed_maps": Option("name"),
    "seed_resolution": Option("name"),
    "source_selection": Option("choice", choices=("bloc", "bcl")),
    "distinct_layer": Option("name"),
    "distinct_k": Option("int", 1, 10000),
    "stain_augment": Option("bool"),
    "color_augment": Option("bool"),
    "stain_normalize": Option("bool"),
    "precise_bn": Option("bool"),
    "freeze_backbone": Option("bool"),
    "tensorboard_images": Option("int", 0, 64),
    "bloc_accuracy_margin": Option("float", 0.0, 1.0),
    "source_lr": Option("float", 0.0, 10.0),
    "pixelcam_lr": Option("float", 0.0, 10.0),
    "source_lr_step": Option("int", 1, 1000),
    "pixelcam_lr_step": Option("int", 1, 1000),
    "lr_gamma": Option("float", 0.0, 1.0),
    "head_lr_mult": Option("float", 0.0, 1000.0),
    "lambda_pix": Option("float", 0.0, 1000.0),
}
#: Keys MONAI Label itself puts in a train request: the model name, the GPUs of the job
#: (``CUDA_VISIBLE_DEVICES``) and the job process's rank.
MONAILABEL_KEYS: dict[str, Option] = {
    "model": Option("name"),
    "gpus": Option("choice", choices=_GPUS),
    "local_rank": Option("int", 0, 1023),
}


def _overrides(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError:
            raise TrainOptionError(f"train option 'bundle_overrides' is not JSON: {value[:80]!r}") from None
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TrainOptionError(f"train option 'bundle_overrides' must be a JSON object, got {value!r}")
    checked = {}
    for key, item in value.items():
        option = BUNDLE_OVERRIDES.get(key) if isinstance(key, str) else None
        if option is None:
            raise TrainOptionError(
                f"bundle override {key!r} is not one a client may set; allowed: {sorted(BUNDLE_OVERRIDES)}"
            )
        checked[key] = option.check(f"bundle_overrides.{key}", item)
    return checked


def check_train_request(request: Mapping[str, Any]) -> dict[str, Any]:
    """A train request, checked against the allow-list (module docstring).

    Args:
        request: the request as MONAI Label passes it (``model``, ``gpus`` and the client's options); values
            that are None or ``""`` mean "the default" and are dropped.

    Returns:
        the request with checked values; ``bundle_overrides`` always a dict.

    Raises:
        TrainOptionError: an unknown key, a value that is not plain, or one outside its bounds; names the key.
    """
    if not isinstance(request, Mapping):
        raise TrainOptionError(f"a train request must be a JSON object, got {type(request).__name__}")
    checked: dict[str, Any] = {"bundle_overrides": {}}
    for key, value in request.items():
        if key == "bundle_overrides":
            checked[key] = _overrides(value)
            continue
        option = (REQUEST_OPTIONS.get(key) or MONAILABEL_KEYS.get(key)) if isinstance(key, str) else None
        if option is None:
            raise TrainOptionError(
                f"train option {key!r} is not one a client may set; allowed: "
                f"{sorted([*REQUEST_OPTIONS, 'bundle_overrides'])}"
            )
        if value is None or value == "":
            continue
        if key in ("mode", "device") and isinstance(value, (list, tuple)) and value:
            for item in value[1:]:
                option.check(key, item)  # every element plain: the request is stored and shown as given
            value = value[0]  # MONAI Label clients echo the config's list of choices; the first is the default
        checked[key] = option.check(key, value)
    return checked
