"""Run under mpiexec: data-parallel fit and evaluate for the named cases.

    mpiexec -n 2 python -m mpi4py tests/mpi/run_cases.py OUT.npz CASE [CASE ...]

Cases are those of cases.py, plus "evaluate" (a fixed model's metrics),
"nan-on-rank-1" (rank 1 alone meets a NaN at step 3), "refusals" (what
fit must refuse on every rank), "checkpoint" (resume) and "again:CASE" (CASE
once more). Rank 0 writes OUT.npz:
per case the weights, every rank's weight digest, the history and the
metrics (JSON), so the test compares them with a single process.
"""
import json
import os
import sys
import types

import numpy as np
from mpi4py import MPI

import nfcl.models
from nfcl import distributed
from nfcl.errors import InputError
from nfcl.models import TrainingError

import cases

comm = MPI.COMM_WORLD
out_path, names = sys.argv[1], sys.argv[2:]
data = cases.split()
arrays, report = {}, {}


def record(name, m, **extra):
    """Every rank's digest of the weights, and rank 0's weights."""
    arrays[f"{name}/params"] = m.params.copy()
    report[name] = dict(digests=comm.allgather(cases.digest(m.params)),
                        history=m.history, **extra)


def fail_at_step(step):
    """A stand-in for nfcl._core whose softmax_xent fails at ``step``."""
    core, calls = nfcl.models._core, [0]

    def softmax_xent(*args):
        calls[0] += 1
        if calls[0] == step:
            raise FloatingPointError("injected")
        return core.softmax_xent(*args)
    kernels = {k: getattr(core, k) for k in dir(core) if not k.startswith("__")}
    return types.SimpleNamespace(**dict(kernels, softmax_xent=softmax_xent))


for name in names:
    if name == "evaluate":
        # a fixed model, trained alike in every process first
        m = cases.model("sasrec-sampled", data)
        m.fit(data.train, epochs=1, batch_size=cases.BATCH, n_neg=50, progress=False)
        metrics = distributed.evaluate(m, data.test, comm=comm)
        record(name, m, metrics=metrics)
    elif name == "nan-on-rank-1":
        m = cases.model("sasrec-sampled", data)
        real = nfcl.models._core
        if comm.Get_rank() == 1:
            nfcl.models._core = fail_at_step(3)
        try:
            distributed.fit(m, data.train, comm=comm, **cases.fit_args("sasrec-sampled"))
            error = None
        except TrainingError as e:
            error = str(e)
        finally:
            nfcl.models._core = real
        record(name, m, errors=comm.allgather(error), step=m._opt["t"],
               grads_zero=comm.allgather(bool(not m._opt["grads"].any()
                                              and m._opt["rowset"][2][0] == 0)))
    elif name == "checkpoint":
        # one epoch, written by rank 0; a second one resumed on every rank;
        # against two epochs straight
        path = os.path.join(os.path.dirname(os.path.abspath(out_path)), "ckpt.npz")
        args = dict(cases.fit_args("sasrec-sampled"), checkpoint=path)
        m = cases.model("sasrec-sampled", data)
        distributed.fit(m, data.train, data.valid, comm=comm, **args)
        comm.Barrier()  # rank 0 has written it
        m = cases.model("sasrec-sampled", data)
        distributed.fit(m, data.train, data.valid, comm=comm, resume=True, **args)
        straight = cases.model("sasrec-sampled", data)
        distributed.fit(straight, data.train, data.valid, comm=comm,
                        **dict(cases.fit_args("sasrec-sampled"), epochs=2))
        record(name, m, straight=comm.allgather(cases.digest(straight.params)))
    elif name == "refusals":
        # what data-parallel fit must refuse on every rank, before any step
        errors = {}
        for what, seed, contrastive in (("reference", 7, "reference"),
                                        ("other-seed", 7 + comm.Get_rank(), "ours")):
            m = cases.model("sasrec-sampled", data, seed=seed)
            try:
                distributed.fit(m, data.train, comm=comm, contrastive=contrastive,
                                **cases.fit_args("sasrec-sampled"))
                errors[what] = None
            except InputError as e:
                errors[what] = str(e)
        # other fit arguments per rank (here epochs) would hang the ranks
        m = cases.model("sasrec-sampled", data)
        try:
            distributed.fit(m, data.train, comm=comm,
                            **dict(cases.fit_args("sasrec-sampled"),
                                   epochs=1 + comm.Get_rank()))
            errors["other-epochs"] = None
        except InputError as e:
            errors["other-epochs"] = str(e)
        report[name] = dict(errors=comm.allgather(errors))
    else:  # a training case; "again:NAME" runs NAME a second time
        case = name.removeprefix("again:")
        m = cases.model(case, data)
        distributed.fit(m, data.train, data.valid, comm=comm, **cases.fit_args(case))
        metrics = distributed.evaluate(m, data.test, comm=comm)
        record(name, m, metrics=metrics, step=m._opt["t"])

if comm.Get_rank() == 0:
    np.savez(out_path, report=np.array(json.dumps(report)), **arrays)
