"""Trial ids, in one place: what makes two trials the same trial, and the names their records are filed under.

- trial_identity(config): the resolved config without location keys, its None model settings filled with the
  defaults they stand for (bench.engine.models.model_settings), so that a changed default never passes an old
  record off as a new trial; a key added after records were committed (ADDED_KEYS) is left out at its default,
  so that those records keep their ids.
- trial_id(config, fingerprint): a grid's id, the first 12 hex characters of the sha1 of the identity and the
  data's fingerprint (bench/experiment/fingerprint.py) as canonical JSON (sorted keys).
- record_name(config): `python -m bench.trial`'s default file name,
  <dataset>-<loss>-m<margin>-b<batch size>-seed<seed>-<8 hex of the identity's sha1>.
- baseline_id(config, fingerprint): 'baseline-' and 12 hex characters of the sha1 of a baseline config
  (bench/experiment/baselines.py) and the data's fingerprint.
These ids name committed records: any change to them orphans those records (tests/test_identity.py checks them).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from bench.engine.config import DEFAULTS, LOCATION_KEYS, resolve
from bench.engine.models import model_settings

ADDED_KEYS = ("budget_steps", "temperature")  # config keys newer than committed records: in the identity only when set


def _digest(obj: Any, chars: int) -> str:
    """The first `chars` hex characters of the sha1 of `obj` as JSON with sorted keys."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:chars]


def trial_identity(config: dict[str, Any]) -> dict[str, Any]:
    """The resolved config without location keys, with its None model settings filled in (module docstring)."""
    cfg = resolve(config)
    left_out = {*LOCATION_KEYS, *(key for key in ADDED_KEYS if cfg[key] == DEFAULTS[key])}
    return {**{k: v for k, v in cfg.items() if k not in left_out}, **model_settings(cfg)}


def trial_id(config: dict[str, Any], fingerprint: str) -> str:
    """12 hex characters of the sha1 of the trial's identity and its data's fingerprint."""
    return _digest({**trial_identity(config), "data_fingerprint": fingerprint}, 12)


def record_name(config: dict[str, Any]) -> str:
    """<dataset>-<loss>-m<margin>-b<batch size>-seed<seed>-<8 hex of the trial identity>: bench.trial's record."""
    cfg = trial_identity(config)
    name = f"{cfg['dataset']}-{cfg['loss']}-m{float(cfg['margin']):g}-b{cfg['batch_size']}-seed{cfg['seed']}"
    return f"{name}-{_digest(cfg, 8)}"


def baseline_id(config: dict[str, Any], fingerprint: str) -> str:
    """'baseline-' and 12 hex characters of the sha1 of a baseline config and its data's fingerprint."""
    return "baseline-" + _digest({**config, "data_fingerprint": fingerprint}, 12)
