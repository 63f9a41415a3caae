"""Synchronous data-parallel training and evaluation over MPI (mpi4py).

Run one process per core or node under an MPI launcher::

    mpirun -n 4 nfcl run ...                  # the command line
    mpirun -n 4 python train.py               # a script calling fit/evaluate

Every process (rank) holds the whole model and the whole training data and
draws the same batches (the shuffle is keyed by the seed and the epoch);
``batch_size`` is the size of the global batch, as in a single process. One
step on every rank:

1. the batch's random choices are made on the whole batch (the sampled
   softmax's candidates from all its targets, BERT4Rec's masks), then the
   rank runs forward and backward on its own contiguous slice of the rows,
   each loss scaled by the slice's share of the batch's mean (rows with a
   target; contrastive anchors), so the slices' gradients sum to the batch's;
2. ONE allreduce of one contiguous float32 buffer sums the dense weights'
   gradient, the gradient rows of the items every rank touches (the
   candidates: sampled negatives and the batch's targets, or the whole
   catalogue for the full softmax) and the step's loss sums;
3. the item rows that only some ranks touch (input items and contrastive
   keys outside the candidates) travel sparsely, as (id, row) records in one
   allgatherv, and every rank adds them in rank order;
4. every rank takes the same Adam step on the same summed gradient and the
   union of the touched rows, so the weights stay equal on every rank.

Evaluation splits the examples into blocks of 256 (the prediction batch, four
sampled-candidate groups of 64), one contiguous run of blocks per rank, and
gathers the per-example rank counts, so the metrics are bitwise those of a
single process.

With dropout, a rank's masks are its own (keyed by its rank), so the run
matches a single process only within the usual statistical sense; with
dropout 0 the weights match a single process within float32 round-off. See
docs/distributed.md for the launch, the exact-match claims and the costs.

``import nfcl`` never imports mpi4py; this module imports it only when a
communicator is needed.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import traceback

import numpy as np

from .errors import InputError, NfclError
from .metrics import MetricAccumulator
from .models import SequentialRecommender, TrainingError

__all__ = ["fit", "evaluate", "data_parallel", "launched", "launched_size", "world",
           "DataParallel"]

# examples per evaluation block: predict_vectors' batch, four groups of 64
EVAL_BLOCK = 256

# world size as MPI launchers export it: Open MPI, MPICH/Hydra and Intel MPI
# (also Slurm's PMI2), MVAPICH
_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")


def launched_size() -> int:
    """The number of processes an MPI launcher started, read from its
    environment; 1 when none did (or the launcher is not known)."""
    for var in _SIZE_VARS:
        try:
            return max(1, int(os.environ.get(var, "")))
        except ValueError:
            continue
    return 1


def world():
    """mpi4py's COMM_WORLD; importing mpi4py starts MPI.

    Raises:
        NfclError: mpi4py is missing, or its MPI sees fewer processes than
        the launcher started (mpi4py uses another MPI than the launcher's,
        so every process would believe it is alone).
    """
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise NfclError("data-parallel training needs mpi4py: pip install 'nfcl[mpi]', or "
                        "mpi4py built against your cluster's MPI (docs/distributed.md)"
                        ) from e
    size = MPI.COMM_WORLD.Get_size()
    if size < launched_size():
        raise NfclError(f"the launcher started {launched_size()} processes, but MPI sees "
                        f"{size}: mpi4py uses another MPI library than this mpirun (use "
                        "the mpiexec of the MPI that mpi4py loads)")
    return MPI.COMM_WORLD


def launched():
    """COMM_WORLD if this process is one of two or more that an MPI launcher
    started, else None (and mpi4py is not imported).

    NFCL_MPI=1 forces the MPI path for a launcher whose environment is not
    recognised; NFCL_MPI=0 turns it off.

    Raises:
        NfclError: as world().
    """
    flag = os.environ.get("NFCL_MPI", "")
    if flag == "0" or (launched_size() < 2 and flag != "1"):
        return None
    comm = world()
    return comm if comm.Get_size() > 1 else None


class DataParallel:
    """The hook nfcl.models calls to train and evaluate over ``comm``.

    Set as ``model._parallel`` (fit, evaluate) or on the class
    (data_parallel); see the module's docstring for the step."""

    def __init__(self, comm):
        from mpi4py import MPI
        self.comm, self._mpi = comm, MPI
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self._arrays = {}

    def _get(self, name, n, dtype) -> np.ndarray:
        """A reused work array of at least n zeros-at-creation elements."""
        a = self._arrays.get(name)
        if a is None or a.size < n or a.dtype != dtype:
            a = np.zeros(max(n, 1), dtype)
            self._arrays[name] = a
        return a[:n]

    def shard(self, n: int) -> tuple:
        """This rank's items lo:hi of n: contiguous, in rank order, the sizes
        differing by at most one."""
        q, r = divmod(n, self.size)
        lo = self.rank * q + min(self.rank, r)
        return lo, lo + q + (self.rank < r)

    # ------------------------------------------------------------------
    # training

    def begin_fit(self, model, train, *, w, contrastive, fit_args=None) -> None:
        """Refuse what data-parallel fit cannot do, before any step.

        Raises:
            InputError: contrastive="reference" with w > 0 (its negatives pair
            rows across the whole batch by index); the ranks were given
            different fit arguments (epochs, batch size, w, ...: they would
            run different step counts and wait on each other forever), or hold
            different models, optimizer states or training data.
        """
        if w > 0 and contrastive != "ours":
            raise InputError(f"contrastive={contrastive!r} is not available in data-parallel "
                             "training: its negatives come from another row of the batch "
                             "by index, which may sit on another rank; use 'ours'")
        args = json.dumps(fit_args or {}, sort_keys=True, default=str)
        every = self.comm.allgather(args)
        odd = [r for r, a in enumerate(every) if a != every[0]]
        if odd:
            mine, first = json.loads(every[odd[0]]), json.loads(every[0])
            names = sorted(k for k in set(mine) | set(first) if mine.get(k) != first.get(k))
            raise InputError(f"rank {odd[0]} was given other fit arguments than rank 0 "
                             f"({', '.join(f'{k}: {mine.get(k)!r} vs {first.get(k)!r}' for k in names)}); "
                             "every rank must call fit with the same arguments")
        h = hashlib.sha256(json.dumps(model.config, sort_keys=True).encode())
        h.update(model.params.tobytes())
        h.update(train.fingerprint().encode())
        if model._opt is not None:
            h.update(f"{model._opt['t']}:{model._opt['epoch']}".encode())
            h.update(model._opt["m"].tobytes())
            h.update(model._opt["v"].tobytes())
        keys = self.comm.allgather(h.hexdigest())
        odd = [r for r, k in enumerate(keys) if k != keys[0]]
        if odd:
            raise InputError(f"ranks {odd} hold another model, optimizer state or training "
                             "data than rank 0: build the model with the same config and "
                             "seed, and load the same data, on every rank")

    def gradients(self, model, batch, step, **loss_args) -> dict:
        """This rank's part of the batch's gradient, then the sum over ranks
        into model._opt (grads, rowset). Returns the whole batch's mean
        losses and anchor count, as a single process would.

        Raises:
            TrainingError: a loss was NaN or infinite on some rank; every
            rank raises it, with the gradients cleared.
        """
        part = dict(zip(("lo", "hi"), self.shard(batch["inputs"].shape[0])))
        failed = None
        try:
            out = model._gradients(batch, step, part=part, **loss_args)
        except TrainingError as e:  # the gradients are cleared; still take part
            failed, out = e, dict(rec=0.0, cl=0.0)
        except BaseException:
            self.abort()
        if "shared" not in part:  # failed before the counts: cannot size the sum
            self.abort()
        stats = self._exchange(model, part, [out["rec"] * part["n_rec_part"],
                                             out["cl"] * part["anchors_part"],
                                             failed is not None])
        if stats[2] > 0:
            model._clear_grads()
            if failed is not None:
                raise failed
            raise TrainingError(f"step {step}: a loss is NaN or infinite on {int(stats[2])} "
                                f"of {self.size} ranks; training stopped, the weights are "
                                f"those after step {step - 1}")
        n_rec, n_cl = part["n_rec"], part["anchors"]
        return dict(rec=stats[0] / n_rec if n_rec else 0.0,
                    cl=stats[1] / n_cl if n_cl else 0.0, anchors=n_cl)

    def _exchange(self, model, part, stats) -> np.ndarray:
        """Sum the ranks' gradients and touched rows in place; returns the
        summed ``stats`` (float64)."""
        MPI, C = self._mpi, model.dim
        opt = model._opt
        grads, (mask, rows, count) = opt["grads"], opt["rowset"]
        V = model.item_emb.shape[0]
        table = grads[:V * C].reshape(V, C)
        shared = part["shared"]

        # this rank's touched rows outside the shared ones
        touched = rows[:count[0]]
        if isinstance(shared, slice):
            own = touched[(touched < shared.start) | (touched >= shared.stop)]
            shared_ids = self._arange(shared.start, shared.stop)
        else:
            flag = self._get("flag", V, np.uint8)  # all zero between calls
            flag[shared] = 1
            own = touched[flag[touched] == 0]
            flag[shared] = 0
            shared_ids = shared
        own = own.copy()

        # one allreduce: shared rows | dense gradient | stats | own-row counts
        n_sh, n_dense, k = shared_ids.size * C, grads.size - V * C, len(stats)
        buf = self._get("sum", n_sh + n_dense + k + self.size, np.float32)
        buf[:n_sh] = table[shared].ravel()
        buf[n_sh:n_sh + n_dense] = grads[V * C:]
        tail = buf[n_sh + n_dense:]
        tail[:] = 0
        tail[:k] = stats
        tail[k + self.rank] = own.size
        self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        table[shared] = buf[:n_sh].reshape(-1, C)
        grads[V * C:] = buf[n_sh:n_sh + n_dense]
        counts = tail[k:].astype(np.int64)
        summed = tail[:k].astype(np.float64)

        # the other touched rows: (id, row bits) records, added in rank order
        extra = np.empty(0, np.int32)
        total = int(counts.sum())
        if total:
            mine = self._get("own", own.size * (C + 1), np.int32).reshape(-1, C + 1)
            mine[:, 0] = own
            mine[:, 1:] = table[own].view(np.int32)
            every = self._get("every", total * (C + 1), np.int32).reshape(-1, C + 1)
            sizes = counts * (C + 1)
            offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
            self.comm.Allgatherv([mine, MPI.INT32_T],
                                 [every, (sizes.tolist(), offsets.tolist()), MPI.INT32_T])
            table[own] = 0
            start = 0
            for n in counts.tolist():  # ids are unique within a rank's records
                block = every[start:start + n]
                table[block[:, 0]] += block[:, 1:].view(np.float32)
                start += n
            extra = np.unique(every[:, 0])

        # the touched rows of the whole batch
        union = np.concatenate([shared_ids, extra]).astype(np.int32)
        mask[union] = 1
        rows[:union.size] = union
        count[0] = union.size
        return summed

    def _arange(self, start, stop) -> np.ndarray:
        key = ("arange", start, stop)
        if key not in self._arrays:
            self._arrays[key] = np.arange(start, stop, dtype=np.int32)
        return self._arrays[key]

    def abort(self):
        """Print the exception being handled and end every rank: an error
        that only this rank sees would leave the others waiting forever."""
        traceback.print_exc()
        print(f"nfcl: rank {self.rank} of {self.size} failed; aborting every rank",
              file=sys.stderr, flush=True)
        self.comm.Abort(1)

    # ------------------------------------------------------------------
    # evaluation

    def evaluate(self, model, examples, protocols, seed, n_neg, ks) -> dict:
        """SequentialRecommender.evaluate over the ranks (arguments checked):
        each rank ranks its blocks of examples, every rank gets the metrics."""
        inputs, lengths = model._as_prefixes(examples)
        N = len(lengths)
        b0, b1 = self.shard(-(-N // EVAL_BLOCK))
        lo, hi = b0 * EVAL_BLOCK, min(b1 * EVAL_BLOCK, N)
        mine = {p: [] for p in protocols}
        if hi > lo:
            q = model._prefix_vectors(inputs[lo:hi], lengths[lo:hi], EVAL_BLOCK)
            targets = np.ascontiguousarray(examples.targets[lo:hi], dtype=np.int32)
            for p in protocols:
                mine[p] = [(lo + a, lo + b, g, t) for a, b, g, t in
                           model._rank_counts(q, targets, p, seed, n_neg, first=lo)]
        every = self.comm.allgather(mine)

        # the metrics, accumulated piece by piece as a single process does
        out = {}
        for p in protocols:
            pieces = [piece for ranks in every for piece in ranks[p]]
            acc = MetricAccumulator(p, ks=ks)
            if p == "full":  # a single process ranks every example in one piece
                pieces = [(0, N, np.concatenate([g for _, _, g, _ in pieces]),
                           np.concatenate([t for _, _, _, t in pieces]))]
            for start, stop, greater, ties in pieces:
                acc.update(greater, ties, examples.target_skips[start:stop])
            out.update(acc.result())
        return out


@contextlib.contextmanager
def data_parallel(comm=None):
    """Within the block, every SequentialRecommender's fit and evaluate run
    data-parallel over ``comm`` (default COMM_WORLD); ``mpirun nfcl run``
    runs its whole experiment this way."""
    hook = DataParallel(world() if comm is None else comm)
    before = SequentialRecommender.__dict__.get("_parallel")
    SequentialRecommender._parallel = hook
    try:
        yield hook
    finally:
        SequentialRecommender._parallel = before


@contextlib.contextmanager
def _attached(model, comm):
    if not isinstance(model, SequentialRecommender):
        raise InputError(f"model must be an nfcl SequentialRecommender (SASRec, BERT4Rec, "
                         f"GRU4Rec, Caser), got {type(model).__name__}")
    hook = DataParallel(world() if comm is None else comm)
    before = model.__dict__.get("_parallel", hook)
    model._parallel = hook
    try:
        yield hook
    finally:
        if before is hook:
            del model._parallel
        else:
            model._parallel = before


def fit(model, train, valid=None, comm=None, **fit_kwargs):
    """``model.fit(train, valid, **fit_kwargs)``, data-parallel over ``comm``.

    Call it on every rank with the same model (same config and seed), data
    and arguments; ``batch_size`` is the global batch, split over the ranks.
    Every rank ends with the same weights and history; only rank 0 shows a
    progress bar and writes the checkpoint (resume reads it on every rank,
    so put it on a file system they share).

    Args:
        comm: an mpi4py communicator; None is COMM_WORLD.

    Returns:
        model.

    Raises:
        InputError: as model.fit, and contrastive="reference" with w > 0, or
        ranks that hold different models or data. TrainingError: a NaN or
        inf on any rank (raised on every rank).
    """
    with _attached(model, comm):
        return model.fit(train, valid, **fit_kwargs)


def evaluate(model, examples, comm=None, **kwargs) -> dict:
    """``model.evaluate(examples, **kwargs)`` with the examples split over
    the ranks of ``comm`` (None: COMM_WORLD); every rank gets the metrics,
    bitwise those of a single process."""
    with _attached(model, comm):
        return model.evaluate(examples, **kwargs)
