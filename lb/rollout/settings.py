"""The rollout sections of a model's config, validated at the config boundary.

Used by `lb.config` (`ModelConfig` has `split`, `match`, `sticky_by`, `shadow`
and `rollout`; `NodeConfig` and `DiscoveryConfig` have a `group`) and read by
the rest of `lb.rollout`; `lb.config.Config` calls `check_models` once all
fields are valid. Pure: pydantic models and checks, no I/O. `key_version` is
the version part of the cache keys of a call routed by group.

Guarantees: a config that passes names only groups some node is in (static
nodes, or `discovery.group`); a split's shares add up to 100; a rollout's steps
rise to at most 100; `split` and `rollout` are not both set (a rollout sets the
split); an agreement gate has a shadow of the rollout's `to` group to read; a
model with only `match`, `sticky_by` or `shadow` sends the rest of its traffic
to the group `default`, which must then exist.
Every error names its field, e.g. ``models.mnist.split: shares add up to 90``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_GROUP = "default"
GroupName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
HeaderName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_\-]+$")]
Percent = Annotated[float, Field(ge=0, le=100)]
SHARE_TOLERANCE = 1e-6


class _Strict(BaseModel):
    """Unknown keys are errors, as everywhere in the config (`lb.config._Strict`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Share(_Strict):
    """One group's share of a model's traffic, in percent."""

    group: GroupName
    share: Percent


class Match(_Strict):
    """Requests whose header `header` equals `value` go to `group`, whatever the split."""

    header: HeaderName
    value: str = Field(max_length=1024)
    group: GroupName

    @field_validator("header")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.lower()         # HTTP/1.1 headers and gRPC metadata keys: no case


class StickyBy(_Strict):
    """What keeps a client in one group: a header's value, or its API key."""

    header: HeaderName | None = None
    api_key: bool = False

    @field_validator("header")
    @classmethod
    def _lower(cls, v: str | None) -> str | None:
        return v.lower() if v is not None else None

    @model_validator(mode="after")
    def _one(self) -> StickyBy:
        if (self.header is None) == (not self.api_key):
            raise ValueError("set either header: NAME or api_key: true")
        return self


class ShadowConfig(_Strict):
    """A copy of `share` % of the model's requests goes to `group`; the answers are
    compared. The copies have their own cap and budget and never delay the client."""

    group: GroupName
    share: Annotated[float, Field(gt=0, le=100)]
    max_inflight: Annotated[int, Field(ge=1, le=1024)] = 8      # shadows in flight at most
    max_per_s: Annotated[float, Field(gt=0)] = 50.0            # the budget: copies per second
    timeout_s: Annotated[float, Field(gt=0, le=600)] = 5.0     # a copy's own deadline
    samples: Annotated[int, Field(ge=0, le=10_000)] = 100      # disagreements kept (/shadow/M)
    window_s: Annotated[float, Field(ge=1, le=3600)] = 60.0    # agreement "now" in /stats


class AbortIf(_Strict):
    """The gates of a rollout step; None switches a gate off."""

    error_rate_over_stable: Annotated[float, Field(ge=0, le=1)] | None = 0.01
    p99_ratio: Annotated[float, Field(gt=0)] | None = 2.0
    agreement_below: Annotated[float, Field(ge=0, le=1)] | None = None
    min_requests: Annotated[int, Field(ge=1, le=1_000_000)] = 50


class RolloutConfig(_Strict):
    """Move the split from `from` to `to` step by step (percent of traffic to `to`)."""

    from_: GroupName = Field(alias="from")
    to: GroupName
    steps: list[Annotated[float, Field(gt=0, le=100)]] = Field(min_length=1, max_length=100)
    every_s: Annotated[float, Field(gt=0)] = 60.0
    abort_if: AbortIf = AbortIf()

    @model_validator(mode="after")
    def _steps(self) -> RolloutConfig:
        if self.from_ == self.to:
            raise ValueError("from and to name the same group")
        if any(b <= a for a, b in itertools.pairwise(self.steps)):
            raise ValueError("steps: each step must be larger than the one before")
        return self


def _check_model(model: Any) -> None:
    """One model's routing sections; raises ValueError("FIELD: why")."""
    split, shadow, rollout = model.split, model.shadow, model.rollout
    if split is not None:
        if not split:
            raise ValueError("split: list at least one group")
        groups = [s.group for s in split]
        if len(set(groups)) != len(groups):
            raise ValueError("split: a group is listed twice")
        total = sum(s.share for s in split)
        if abs(total - 100.0) > SHARE_TOLERANCE:
            raise ValueError(f"split: shares add up to {total:g}, expected 100")
        if rollout is not None:
            raise ValueError("rollout: a model has a split or a rollout, not both "
                             "(the rollout sets the split)")
    if rollout is not None and rollout.abort_if.agreement_below is not None and (
            shadow is None or shadow.group != rollout.to):
        raise ValueError("rollout.abort_if.agreement_below: needs a shadow of the "
                         f"rollout's group ({rollout.to!r}) to compare with")
    if shadow is not None and rollout is not None and shadow.group == rollout.from_:
        raise ValueError("shadow.group: the rollout's stable group answers the "
                         "requests already; shadow its `to` group")


def key_version(version: int, group: str | None) -> str:
    """The version part of a cache key: a call routed by group keys its group's answers
    apart ("3@canary"), since two groups may serve different models as one version."""
    return str(version) if group is None else f"{version}@{group}"


def routed(model: Any) -> bool:
    """Whether a `ModelConfig` routes by group (any routing section set)."""
    return bool(model.split is not None or model.match or model.sticky_by is not None
                or model.shadow is not None or model.rollout is not None)


def named_groups(model: Any) -> Iterator[tuple[str, str]]:
    """(field, group) of every group a `ModelConfig` names."""
    split = model.split
    if split is None and model.rollout is None:
        yield "split", DEFAULT_GROUP        # the primary's group when only matching/shadowing
    for i, s in enumerate(split or ()):
        yield f"split.{i}.group", s.group
    for i, m in enumerate(model.match):
        yield f"match.{i}.group", m.group
    if model.shadow is not None:
        yield "shadow.group", model.shadow.group
    if model.rollout is not None:
        yield "rollout.from", model.rollout.from_
        yield "rollout.to", model.rollout.to


def check_models(node_groups: Iterable[str], models: dict[str, Any]) -> None:
    """Every routed model's sections hold together and every group it names has a node;
    raises ValueError("models.M.FIELD: why") (`lb.config.Config` calls it)."""
    known = set(node_groups)
    for name, model in models.items():
        if not routed(model):
            continue
        try:
            _check_model(model)
        except ValueError as exc:
            raise ValueError(f"models.{name}.{exc}") from None
        for where, group in named_groups(model):
            if group not in known:
                raise ValueError(f"models.{name}.{where}: no node is in group {group!r} "
                                 f"(groups: {', '.join(sorted(known))})")
