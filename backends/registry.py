"""Models, versions and labels served by one worker, with TF Serving's version states.

Built by `worker.main` from the command line (`add_model`, `add_label`), filled by
`load_all` in a background thread, and read by `rest` on the event loop
(`status`, `resolve`). Never imports TensorFlow: the loader is passed in.

Guarantees:
- every numeric folder under a base path is a version (`00000123` is 123);
- a version is LOADING until its load finishes, then AVAILABLE, or END with the
  error code and message of the failure; a failure never stops other loads;
- `resolve` returns only AVAILABLE versions and raises `ModelNotFound` (404) or
  `NotReady` (503) with TF Serving's messages otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backends.errors import InvalidInput, ModelNotFound, NotReady, WorkerError

logger = logging.getLogger("backends")

START, LOADING, AVAILABLE, END = "START", "LOADING", "AVAILABLE", "END"


@dataclass
class Version:
    """One version directory and its state; `servable` is set once AVAILABLE."""

    number: int
    path: Path
    state: str = LOADING
    error_code: str = "OK"
    error_message: str = ""
    servable: Any = None

    def status_json(self) -> dict[str, Any]:
        """This version in TF Serving's `model_version_status` shape."""
        return {
            "version": str(self.number),
            "state": self.state,
            "status": {"error_code": self.error_code, "error_message": self.error_message},
        }


@dataclass
class Model:
    """A model name, its base path, its versions by number and its labels."""

    name: str
    base_path: Path
    versions: dict[int, Version] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)


def discover_versions(base_path: Path, quiet: bool = False) -> dict[int, Version]:
    """Every numeric sub-folder of `base_path` as a Version (empty if the path is missing)."""
    if not base_path.is_dir():
        if not quiet:
            logger.warning("model base path %s does not exist or is not a directory", base_path)
        return {}
    versions = {}
    for child in sorted(base_path.iterdir()):
        if child.is_dir() and child.name.isdigit():
            versions[int(child.name)] = Version(int(child.name), child)
    if not versions and not quiet:
        logger.warning("no numeric version folders under %s", base_path)
    return versions


class Registry:
    """All models of the worker. Mutated by the loader thread, read by the event loop."""

    def __init__(self) -> None:
        self.models: dict[str, Model] = {}

    def add_model(self, name: str, base_path: Path) -> Model:
        """Register `name` with every version found under `base_path`."""
        if name in self.models:
            raise ValueError(f"model {name} is given twice")
        model = Model(name, base_path, discover_versions(base_path))
        self.models[name] = model
        logger.info("model %s: versions %s under %s", name, sorted(model.versions), base_path)
        return model

    def add_label(self, model: str, label: str, version: int) -> None:
        """Point `label` of `model` at `version` (which must exist on disk)."""
        if model not in self.models:
            raise ValueError(f"label {label}: unknown model {model}")
        if version not in self.models[model].versions:
            raise ValueError(f"label {label}: model {model} has no version {version}")
        self.models[model].labels[label] = version

    def load_all(self, load: Callable[[Path], Any]) -> None:
        """Load every version with `load(path)`; record AVAILABLE or END. Runs off the loop."""
        for model in self.models.values():
            for version in model.versions.values():
                version.state = LOADING
        for model in self.models.values():
            for number in sorted(model.versions):
                self._load_one(model, model.versions[number], load)

    def rescan(self, load: Callable[[Path], Any]) -> int:
        """Load version folders that appeared since the last scan (TF Serving polls its
        base paths the same way); returns how many were found. Runs off the loop; the
        event loop sees each model's versions dict replaced, never mutated."""
        added = 0
        for model in list(self.models.values()):
            for number, version in discover_versions(model.base_path, quiet=True).items():
                if number in model.versions:
                    continue
                logger.info("model %s: new version %d under %s", model.name, number,
                            model.base_path)
                model.versions = {**model.versions, number: version}
                self._load_one(model, version, load)
                added += 1
        return added

    @staticmethod
    def _load_one(model: Model, version: Version, load: Callable[[Path], Any]) -> None:
        try:
            version.servable = load(version.path)
        except Exception as exc:  # any failure is reported in the status, never raised
            version.error_code = exc.code if isinstance(exc, WorkerError) else "UNKNOWN"
            version.error_message = str(exc) or type(exc).__name__
            version.state = END
            logger.error("model %s version %d failed to load: %s",
                         model.name, version.number, version.error_message)
            return
        version.state = AVAILABLE
        logger.info("model %s version %d is AVAILABLE", model.name, version.number)

    def _label_version(self, model: Model, label: str) -> int:
        if label not in model.labels:
            raise ModelNotFound(f"Unrecognized servable version label: {label}")
        return model.labels[label]

    def status(self, name: str, version: int | None = None,
               label: str | None = None) -> dict[str, Any]:
        """The body of `GET /v1/models/{name}[/versions/{n}|/labels/{l}]`."""
        model = self.models.get(name)
        if model is None or not model.versions:
            raise ModelNotFound(f"Could not find any versions of model {name}")
        if label is not None:
            version = self._label_version(model, label)
        if version is not None:
            if version not in model.versions:
                raise ModelNotFound(f"Could not find version {version} of model {name}")
            chosen = [model.versions[version]]
        else:
            chosen = [model.versions[n] for n in sorted(model.versions, reverse=True)]
        return {"model_version_status": [v.status_json() for v in chosen]}

    def resolve(self, name: str, version: int | None = None,
                label: str | None = None) -> Version:
        """The AVAILABLE version a request is for: latest, specific, or by label."""
        model = self.models.get(name)
        if model is None:
            what = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
            raise ModelNotFound(f"Servable not found for request: {what}")
        if label is not None:
            version = self._label_version(model, label)
        if version is not None:
            return self._specific(model, version)
        available = [n for n, v in model.versions.items() if v.state == AVAILABLE]
        if available:
            return model.versions[max(available)]
        if any(v.state in (START, LOADING) for v in model.versions.values()):
            raise NotReady(f"Model {name} is still loading: Latest({name})")
        raise ModelNotFound(f"Servable not found for request: Latest({name})")

    @staticmethod
    def _specific(model: Model, number: int) -> Version:
        found = model.versions.get(number)
        if found is not None and found.state == AVAILABLE:
            return found
        if found is not None and found.state in (START, LOADING):
            raise NotReady(f"Model {model.name} version {number} is still loading: "
                           f"Specific({model.name}, {number})")
        raise ModelNotFound(f"Servable not found for request: Specific({model.name}, {number})")


def parse_version(text: str) -> int:
    """A version number from a URL segment; InvalidInput if it is not an integer."""
    try:
        return int(text)
    except ValueError:
        raise InvalidInput(f"Invalid version: {text}") from None
