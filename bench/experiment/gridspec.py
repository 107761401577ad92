"""A grid's specification: its axes, fixed and per-dataset settings and blocks, and the points it expands to.

Pure (no training, no Ray): bench.grid runs the points, and bench.reporting.stats asks for the same points to know which
cells the report expects. A spec is a preset's JSON or the same sections of a grid.json:
- "axes": {axis: [values]} for every one of AXES and any of OPTIONAL_AXES;
- "fixed": {config key: value} for every trial; "per_dataset": {dataset: {key: value}} overriding "fixed" for
  one dataset, its optional "axes" replacing the values of some axes (not "dataset") for that dataset;
- "citable" (optional, default false): true for a reference design whose complete run may be cited (full budgets,
  n >= 3 seeds, selection on validation); its run at RESULTS/<preset>/ is the committed reference;
- "fresh_seeds" (optional): seeds that take no part in selection: once every point has a record, each loss's
  validation-selected cell (per dataset and protocol) is run again on these seeds (Grid.fresh), and the report's
  test numbers to cite come from those runs (MLRC's "retrain the best configuration"). They must not overlap the
  seeds of the grid;
- "blocks" (optional): a list of {axis: [values]}; the grid is then the union of the blocks, each the product of
  its own values and, for the axes it leaves out, the dataset's values (its "per_dataset" axes, else "axes").
  Without "blocks" the grid is one block that sets nothing: the product of the axes, per dataset.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.engine import plugins
from bench.engine.config import KEYS, LOCATION_KEYS

AXES = ("dataset", "loss", "margin", "batch_size", "seed")  # every preset lists these
# settings a preset may put on an axis: the report keeps their values apart as the cell's "variant", and selection
# chooses among them as it does among margins and batch sizes (each is one more configuration a loss is tuned over)
VARIANT_AXES = ("lr", "lr_scaling", "normalize", "temperature", "sampler", "samples_per_class", "budget_samples",
                "budget_steps")
UNSET_OMITTED = ("temperature",)  # variant axes whose None means the setting does not apply (a triplet loss has no
# temperature): left out of the variant's label
OPTIONAL_AXES = ("protocol", *VARIANT_AXES)  # a preset may list these too
AXIS_ORDER = ("dataset", "protocol", "loss", "margin", "batch_size", *VARIANT_AXES, "seed")  # a point's axes, in order
GRID_SECTIONS = ("axes", "fixed", "per_dataset", "blocks", "fresh_seeds")  # what a preset and a grid.json share
PRESET_SECTIONS = ("doc", "citable", "plugins", *GRID_SECTIONS)


class GridError(ValueError):
    """A preset, data folder or experiment folder the grid cannot start with; the message is one line."""


@dataclass(frozen=True)
class Grid:
    """A checked preset: its name, the values of each axis, the keys fixed for all or one dataset, the axes whose
    values one dataset replaces (dataset_axes: {dataset: {axis: [values]}}) and the blocks whose union it is."""

    preset: str
    axes: dict[str, list[Any]]  # in the order of AXIS_ORDER
    fixed: dict[str, Any]
    per_dataset: dict[str, dict[str, Any]]
    dataset_axes: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    blocks: tuple[dict[str, list[Any]], ...] = ({},)
    citable: bool = False
    doc: str = ""  # the preset's "doc", its lines joined
    fresh_seeds: tuple[int, ...] = ()
    plugins: tuple[str, ...] = ()  # absolute paths of the preset's plugins (bench.engine.plugins), imported

    def points(self) -> list[dict[str, Any]]:
        """Every point of every block once, as {axis: value} in the order of `axes`, sorted dataset by dataset,
        then axis by axis in the order of AXIS_ORDER, each axis's values in the order they are first named."""
        names = list(self.axes)
        found: dict[str, dict[str, Any]] = {}
        for block in self.blocks:
            for dataset in block.get("dataset", self.axes["dataset"]):
                values = {**self.axes, **self.dataset_axes.get(dataset, {}), **block, "dataset": [dataset]}
                for combo in itertools.product(*(values[axis] for axis in names)):
                    found.setdefault(json.dumps(combo), dict(zip(names, combo, strict=True)))
        rank = {axis: [] for axis in names}
        for section in (self.axes, *self.dataset_axes.values(), *self.blocks):
            for axis, values in section.items():
                rank[axis] += [text for text in map(json.dumps, values) if text not in rank[axis]]
        return sorted(found.values(), key=lambda p: [rank[axis].index(json.dumps(p[axis])) for axis in names])

    def seeds(self) -> list[int]:
        """Every seed of the grid's points (the selection seeds)."""
        return sorted({point["seed"] for point in self.points()})

    def fresh(self, cells: list[dict[str, Any]]) -> Grid:
        """The grid of `cells` ({axis: value} without seed: the selected cells) on the fresh seeds, with this grid's
        settings; no fresh seeds of its own. Empty `cells` give a grid without points."""
        seeds = list(self.fresh_seeds)
        blocks = tuple({**{axis: [cell[axis]] for axis in self.axes if axis != "seed"}, "seed": seeds}
                       for cell in cells)
        return dataclasses.replace(self, axes={**self.axes, "seed": seeds}, blocks=blocks, fresh_seeds=())

    def point(self, config: dict[str, Any]) -> dict[str, Any]:
        """The grid point of a config (a trial config, or Ray's: {"point": point} or {axis: value})."""
        return dict(config["point"]) if "point" in config else {axis: config[axis] for axis in self.axes}

    def config(self, point: dict[str, Any]) -> dict[str, Any]:
        """The trial config of one grid point, without location keys."""
        return {**self.fixed, **self.per_dataset.get(point["dataset"], {}), **point}

    def spec(self, experiment: str, threads: int | None, fingerprints: dict[str, str]) -> dict[str, Any]:
        """The content of grid.json: the preset, its doc, whether it is citable, the default thread count and each
        dataset's fingerprint ("blocks" only when the preset has them)."""
        per_dataset = {name: {**self.per_dataset.get(name, {}),
                              **({"axes": self.dataset_axes[name]} if self.dataset_axes.get(name) else {})}
                       for name in [*self.per_dataset, *(d for d in self.dataset_axes if d not in self.per_dataset)]}
        blocks = {"blocks": list(self.blocks)} if self.blocks != ({},) else {}
        fresh = {"fresh_seeds": list(self.fresh_seeds)} if self.fresh_seeds else {}
        plugins = {"plugins": list(self.plugins)} if self.plugins else {}
        return {"preset": self.preset, "experiment": experiment, "doc": self.doc, "citable": self.citable, **plugins,
                "axes": self.axes, "fixed": self.fixed, "per_dataset": per_dataset, **blocks, **fresh,
                "threads": threads, "data": fingerprints}


def _shown(value: Any) -> str:
    """A setting as the report names it: on/off, default (None), %g for floats."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "default"
    return f"{value:g}" if isinstance(value, float) else str(value)


def variant(config: dict[str, Any], axes: Iterable[str]) -> str:
    """The values in `config` of the VARIANT_AXES among `axes`, as "lr 0.0003, normalize off" ("" for none); an
    axis of UNSET_OMITTED left out where it is None."""
    values = {axis: config.get(axis, KEYS[axis].default) for axis in VARIANT_AXES if axis in axes}
    return ", ".join(f"{axis} {_shown(value)}" for axis, value in values.items()
                     if not (value is None and axis in UNSET_OMITTED))


def with_threads(config: dict[str, Any], threads: int | None) -> dict[str, Any]:
    """A trial config with `threads` filled in where the grid leaves it None."""
    return {**config, "threads": threads} if config.get("threads") is None else config


def _typed(key: str, value: Any) -> Any:
    """`value` checked against the type of config key `key` (bench.engine.config.KEYS; ints accepted for floats,
    made float; None where the default is None)."""
    spec = KEYS.get(key)
    if spec is None or (value is None and spec.default is None):
        return value
    kind = (int, float) if spec.type is float else spec.type
    if isinstance(value, bool) != (spec.type is bool) or not isinstance(value, kind):
        raise GridError(f"{key} must be {spec.type.__name__}, got {value!r}")
    return float(value) if spec.type is float else value


def _settings(section: str, raw: Any, axes: Iterable[str]) -> dict[str, Any]:
    """A "fixed" or per-dataset section: a dict of typed config keys that are neither axes nor locations."""
    if not isinstance(raw, dict):
        raise GridError(f'"{section}" must be an object of config keys')
    taken = sorted(set(raw) & {*AXES, *axes, *LOCATION_KEYS})
    if taken:
        raise GridError(f'"{section}" sets {taken}, which the axes or the command line set')
    return {key: _typed(key, value) for key, value in raw.items()}


def _axis_values(name: str, axis: str, values: Any) -> list[Any]:
    """The typed values of one axis: a non-empty list without repeats."""
    if not isinstance(values, list) or not values:
        raise GridError(f'{name} "{axis}" must be a non-empty list')
    values = [_typed(axis, value) for value in values]
    if len({json.dumps(value) for value in values}) < len(values):
        raise GridError(f'{name} "{axis}" repeats a value: {values}')
    return values


def _blocks(raw: Any, axes: dict[str, list[Any]]) -> tuple[dict[str, list[Any]], ...]:
    """The checked "blocks": a non-empty list of {axis: [values]} over the axes that "axes" lists, datasets
    among the "dataset" axis."""
    if raw is None:
        return ({},)
    if not isinstance(raw, list) or not raw or not all(isinstance(block, dict) for block in raw):
        raise GridError('"blocks" must be a non-empty list of {axis: [values]} objects')
    blocks = []
    for index, block in enumerate(raw):
        if set(block) - set(axes):
            raise GridError(f'"blocks"[{index}] names {sorted(set(block) - set(axes))}, not axes that "axes" lists')
        block = {axis: _axis_values(f'"blocks"[{index}] axis', axis, block[axis]) for axis in axes if axis in block}
        if set(block.get("dataset", [])) - set(axes["dataset"]):
            raise GridError(f'"blocks"[{index}] names datasets outside the "dataset" axis {axes["dataset"]}')
        blocks.append(block)
    return tuple(blocks)


def _plugins(raw: Any, base: Path) -> tuple[str, ...]:
    """The "plugins" section's files, relative to `base` (the preset's folder), as absolute paths, imported."""
    if not isinstance(raw, list) or not all(isinstance(path, str) for path in raw):
        raise GridError('"plugins" must be a list of .py paths (relative to the preset file)')
    try:
        return tuple(plugins.load([str(base / path) for path in raw]))
    except plugins.PluginError as err:
        raise GridError(str(err)) from None


def parse_grid(raw: Any, name: str = "", base: Path | None = None) -> Grid:
    """The Grid of a preset's JSON (or of a grid.json's GRID_SECTIONS), checked for shape and types; its plugins,
    relative to `base` (default: the working folder), are imported first."""
    if not isinstance(raw, dict) or set(raw) - set(PRESET_SECTIONS):
        raise GridError(f"a preset is a JSON object with keys {', '.join(PRESET_SECTIONS)}")
    loaded = _plugins(raw["plugins"], base or Path()) if "plugins" in raw else ()
    axes = raw.get("axes")
    if not isinstance(axes, dict) or not set(AXES) <= set(axes) <= {*AXES, *OPTIONAL_AXES}:
        raise GridError(f'"axes" must give a list of values for each of {", ".join(AXES)}, and may for '
                        f'{", ".join(OPTIONAL_AXES)}')
    axes = {axis: _axis_values("axis", axis, axes[axis]) for axis in AXIS_ORDER if axis in axes}
    fixed = _settings("fixed", raw.get("fixed", {}), axes)
    per_dataset = raw.get("per_dataset", {})
    if not isinstance(per_dataset, dict) or set(per_dataset) - set(axes["dataset"]):
        raise GridError(f'"per_dataset" must map datasets of the "dataset" axis {axes["dataset"]} to config keys')
    dataset_axes = {}
    for dataset, keys in per_dataset.items():
        own = keys.get("axes", {}) if isinstance(keys, dict) else {}
        if not isinstance(own, dict) or not set(own) <= set(axes) - {"dataset"}:
            raise GridError(f'"per_dataset.{dataset}.axes" may only replace the values of axes that "axes" lists '
                            f'(not dataset): {", ".join(a for a in axes if a != "dataset")}')
        dataset_axes[dataset] = {axis: _axis_values(f"per_dataset.{dataset} axis", axis, own[axis])
                                 for axis in axes if axis in own}
    per_dataset = {dataset: _settings(f"per_dataset.{dataset}", {k: v for k, v in keys.items() if k != "axes"}, axes)
                   for dataset, keys in per_dataset.items()}
    citable = raw.get("citable", False)
    if not isinstance(citable, bool):
        raise GridError(f'"citable" must be true or false, got {citable!r}')
    doc = raw.get("doc", "")
    if not (isinstance(doc, str) or isinstance(doc, list) and all(isinstance(line, str) for line in doc)):
        raise GridError('"doc" must be a text or a list of lines')
    grid = Grid(name, axes, fixed, per_dataset, {d: own for d, own in dataset_axes.items() if own},
                _blocks(raw.get("blocks"), axes), citable, doc if isinstance(doc, str) else " ".join(doc),
                plugins=loaded)
    if "fresh_seeds" not in raw:
        return grid
    fresh = _axis_values('"fresh_seeds"', "seed", raw["fresh_seeds"])
    overlap = sorted(set(fresh) & set(grid.seeds()))
    if overlap:
        raise GridError(f'"fresh_seeds" {fresh} overlap the selection seeds {grid.seeds()} (seed {overlap[0]}): the '
                        "reported test numbers must come from seeds that took no part in selection")
    return dataclasses.replace(grid, fresh_seeds=tuple(fresh))


def stored_grid(spec: dict[str, Any]) -> Grid:
    """The Grid of a grid.json (its GRID_SECTIONS, "doc" and "citable", checked like a preset's)."""
    return parse_grid({key: spec[key] for key in PRESET_SECTIONS if key in spec}, spec.get("preset", ""))
