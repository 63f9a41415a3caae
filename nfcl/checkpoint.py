"""Training checkpoints: everything fit needs to continue a run bit for bit.

A checkpoint is one ``.npz`` file, read with ``allow_pickle=False``:

- ``params``, ``m``, ``v``: the weights and Adam's moment estimates (float32).
  Gradients are not stored: between two steps they are all zero.
- ``best_params`` (optional): the weights of the best validation epoch so far,
  so ``restore_best`` works across a resume.
- ``header``: a JSON string with the format version, the model class, its
  config and item keys, the fingerprint of the training Sessions, the step
  counter ``t`` and ``epoch`` (shuffling is keyed by (seed, epoch), dropout
  and negative sampling by (seed, t)), the fit arguments, the history and the
  SHA-256 of every array.

The file is written to a temporary file in the same folder, flushed to disk
and moved over the old one with ``os.replace``, so a crash while writing
leaves the last complete checkpoint in place.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile

import numpy as np

from .errors import NfclError

CHECKPOINT_VERSION = 1
_ARRAYS = ("params", "m", "v")


def _digest(a: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes."""
    h = hashlib.sha256(f"{a.dtype.str}:{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _config_text(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def _write_atomic(path: str, arrays: dict) -> None:
    """np.savez to a temp file beside ``path``, fsync, then os.replace."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".nfcl-ckpt-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable; not every file system allows it
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def save_checkpoint(
    model,
    path,
    fingerprint: str,
    fit_args: dict,
    best: float = -math.inf,
    best_params=None,
) -> None:
    """Write the training state of ``model`` (after a whole epoch) to ``path``.

    Raises:
        NfclError: the weights or optimizer state hold NaN or inf, or the
        gradients are not zero (not between two steps); the old file is kept.
    """
    opt = model._opt
    if opt is None:
        raise NfclError("no optimizer state to checkpoint; call fit first")
    arrays = {"params": model.params, "m": opt["m"], "v": opt["v"]}
    if best_params is not None:
        arrays["best_params"] = best_params
    for name, a in arrays.items():
        if not np.all(np.isfinite(a)):
            raise NfclError(
                f"refusing to write checkpoint {path}: {name} holds NaN or "
                "infinite values; the previous checkpoint is kept"
            )
    if np.any(opt["grads"]) or opt["rowset"][2][0] != 0:
        raise NfclError(
            f"refusing to write checkpoint {path}: gradients are not zero, "
            "so this is not the state between two steps"
        )
    header = dict(
        format_version=CHECKPOINT_VERSION,
        model=type(model).__name__,
        config=model.config,
        item_keys=model.item_keys,
        data_fingerprint=fingerprint,
        t=int(opt["t"]),
        epoch=int(opt["epoch"]),
        fit_args=fit_args,
        best=None if not math.isfinite(best) else float(best),
        history=model.history,
        sha256={name: _digest(a) for name, a in arrays.items()},
    )
    try:
        text = json.dumps(header, allow_nan=False)
    except ValueError as e:
        raise NfclError(
            f"refusing to write checkpoint {path}: the header holds NaN or "
            f"infinite values ({e})"
        ) from None
    arrays["header"] = np.array(text)
    _write_atomic(os.fspath(path), arrays)


def read_checkpoint(path) -> tuple[dict, dict]:
    """Read and verify a checkpoint file -> (header, arrays).

    Raises:
        NfclError: unreadable, truncated, of another format version, or an
        array whose checksum or values are wrong.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise NfclError(f"{path}: no checkpoint to resume from")
    try:
        with np.load(path, allow_pickle=False) as z:
            names = set(z.files)
            header = json.loads(str(z["header"]))
            if not isinstance(header, dict):
                raise ValueError("the header is not a JSON object")
            arrays = {name: np.array(z[name]) for name in names - {"header"}}
    except Exception as e:  # zip, npy, JSON and key errors alike
        raise NfclError(
            f"{path}: not a readable nfcl checkpoint ({type(e).__name__}: {e})"
        ) from None
    version = header.get("format_version")
    if version != CHECKPOINT_VERSION:
        raise NfclError(
            f"{path}: checkpoint format version {version!r} is not supported "
            f"(this nfcl reads {CHECKPOINT_VERSION})"
        )
    sums = header.get("sha256")
    if (
        not isinstance(sums, dict)
        or set(sums) != set(arrays)
        or not set(_ARRAYS) <= set(arrays)
    ):
        raise NfclError(
            f"{path}: the checkpoint's arrays {sorted(arrays)} do not match its header"
        )
    for name, a in arrays.items():
        if a.dtype != np.float32 or a.ndim != 1:
            raise NfclError(f"{path}: array {name!r} is not a 1-D float32 array")
        if _digest(a) != sums[name]:
            raise NfclError(
                f"{path}: checksum mismatch in {name!r}, the file is corrupted"
            )
        if not np.all(np.isfinite(a)):
            raise NfclError(f"{path}: array {name!r} holds NaN or infinite values")
    for key, kind in (
        ("t", int),
        ("epoch", int),
        ("history", list),
        ("fit_args", dict),
    ):
        if not isinstance(header.get(key), kind) or isinstance(header.get(key), bool):
            raise NfclError(
                f"{path}: header field {key!r} is missing or not a {kind.__name__}"
            )
    return header, arrays


def restore_checkpoint(model, path, fingerprint: str, fit_args: dict) -> tuple:
    """Load ``path`` into ``model`` (weights, optimizer, history) to resume fit.

    Returns:
        (best, best_params): the best validation score so far and its weights
        (``-inf`` and None when there were none).

    Raises:
        NfclError: the checkpoint is unreadable or belongs to another model
        class, config, item keys, training data or fit arguments.
    """
    header, arrays = read_checkpoint(path)
    if header.get("model") != type(model).__name__:
        raise NfclError(
            f"{path}: checkpoint of a {header.get('model')}, not a "
            f"{type(model).__name__}"
        )
    if _config_text(header.get("config")) != _config_text(model.config):
        raise NfclError(
            f"{path}: checkpoint config {header.get('config')} differs from "
            f"the model's {model.config}"
        )
    if header.get("item_keys") != model.item_keys:
        raise NfclError(f"{path}: checkpoint item keys differ from the model's")
    if header.get("data_fingerprint") != fingerprint:
        raise NfclError(
            f"{path}: checkpoint was written for other training data "
            "(Sessions fingerprint differs)"
        )
    stored = header["fit_args"]
    diff = sorted(
        k for k in set(stored) | set(fit_args) if stored.get(k) != fit_args.get(k)
    )
    if diff:
        parts = ", ".join(
            f"{k}={stored.get(k)!r} (now {fit_args.get(k)!r})" for k in diff
        )
        raise NfclError(
            f"{path}: checkpoint was trained with other fit arguments: {parts}"
        )
    n = model.params.size
    for name, a in arrays.items():
        if a.size != n:
            raise NfclError(
                f"{path}: array {name!r} has {a.size} values, the model {n}"
            )
    model._init_optimizer()
    model.params[:] = arrays["params"]
    model._opt["m"][:] = arrays["m"]
    model._opt["v"][:] = arrays["v"]
    model._opt["t"] = header["t"]
    model._opt["epoch"] = header["epoch"]
    model.history = list(header["history"])
    best = header.get("best")
    return (-math.inf if best is None else float(best)), arrays.get("best_params")


class FitCheckpoint:
    """The checkpoint of one fit call: restore once, save after every epoch."""

    def __init__(self, model, path, fingerprint: str, fit_args: dict):
        self.model, self.path = model, os.fspath(path)
        self.fingerprint, self.fit_args = fingerprint, fit_args

    def restore(self) -> tuple:
        return restore_checkpoint(
            self.model, self.path, self.fingerprint, self.fit_args
        )

    def save(self, best: float, best_params) -> None:
        save_checkpoint(
            self.model, self.path, self.fingerprint, self.fit_args, best, best_params
        )
