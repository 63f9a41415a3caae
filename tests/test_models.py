"""The model API: fit, evaluate, recommend, save/load, weights, bad input."""
import json
import os

import numpy as np
import pytest

import nfcl
from nfcl import io, sessions
from nfcl.errors import InputError, NfclError
from nfcl.models import TrainingError


@pytest.fixture(scope="module")
def split():
    return sessions.leave_last_out(io.load_example())


@pytest.fixture(scope="module")
def trained(split):
    m = nfcl.SASRec(split.train.n_items, dim=16, heads=2, layers=1, seed=0,
                    item_keys=split.train.item_keys)
    m.fit(split.train, split.valid, epochs=3, progress=False)
    return m


def test_fit_lowers_the_loss_and_metrics_are_in_range(trained, split):
    losses = [h["loss"] for h in trained.history]
    assert losses[-1] < losses[0]
    out = trained.evaluate(split.test)
    for proto in ("full", "sampled"):
        for k in (1, 5, 10, 20):
            assert 0.0 <= out[f"{proto}:HR@{k}"] <= 1.0
        assert out[f"{proto}:HR@1"] <= out[f"{proto}:HR@5"] <= out[f"{proto}:HR@10"]
        assert out[f"{proto}:MRR@10"] <= out[f"{proto}:HR@10"]
    # sampled candidates are a subset of the catalogue: ranking is easier
    assert out["sampled:HR@10"] >= out["full:HR@10"]


def test_same_seed_gives_bitwise_identical_weights(split):
    def train():
        m = nfcl.SASRec(split.train.n_items, dim=16, heads=2, layers=1, seed=5)
        return m.fit(split.train, epochs=2, progress=False).params
    np.testing.assert_array_equal(train(), train())


def test_weights_are_named_views_that_can_be_set(trained):
    w = trained.get_weights()
    assert w["item_emb"].shape == (trained.n_items, 16)
    assert not np.shares_memory(w["head_w"], trained.params)
    assert np.shares_memory(trained.weights["head_w"], trained.params)
    np.testing.assert_array_equal(trained.weights["item_emb"][0], 0)
    m = nfcl.SASRec(trained.n_items, dim=16, heads=2, layers=1, seed=9)
    m.set_weights(w)
    np.testing.assert_array_equal(m.params, trained.params)
    with pytest.raises(InputError, match="head_w.*shape"):
        m.set_weights({"head_w": np.zeros((3, 3))})
    with pytest.raises(InputError, match="unknown weight 'nope'"):
        m.set_weights({"nope": np.zeros(1)})
    with pytest.raises(InputError, match="NaN"):
        m.set_weights({"head_b": np.full(16, np.nan)})


def test_recommend_never_returns_padding_and_can_exclude_seen(trained, split):
    seqs = [split.test.inputs[i, :split.test.lengths[i]] for i in range(20)]
    ids = trained.recommend(seqs, k=10)
    assert ids.shape == (20, 10) and ids.min() >= 1
    scores = trained.score(seqs)
    assert np.isneginf(scores[:, 0]).all()
    np.testing.assert_array_equal(ids[:, 0], np.argmax(scores, axis=1))
    ids = trained.recommend(seqs, k=10, exclude_seen=True)
    for s, row in zip(seqs, ids):
        assert not set(s.tolist()) & set(row.tolist())


def test_save_load_roundtrip_and_corruption(trained, split, tmp_path):
    path = tmp_path / "m.npz"
    trained.save(path)
    m = nfcl.SASRec.load(path)
    np.testing.assert_array_equal(m.params, trained.params)
    assert m.item_keys == trained.item_keys
    a, b = m.evaluate(split.test), trained.evaluate(split.test)
    assert a == b
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".nfcl-")]

    # a flipped byte in the weights is caught by the checksum
    with np.load(path) as z:
        params, header = z["params"].copy(), str(z["header"])
    params[3] += 1.0
    np.savez(tmp_path / "bad.npz", params=params, header=np.array(header))
    with pytest.raises(NfclError, match="checksum"):
        nfcl.SASRec.load(tmp_path / "bad.npz")
    h = json.loads(header)
    h["format_version"] = 99
    np.savez(tmp_path / "v99.npz", params=params, header=np.array(json.dumps(h)))
    with pytest.raises(NfclError, match="format version 99"):
        nfcl.SASRec.load(tmp_path / "v99.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(NfclError, match="not a readable nfcl model"):
        nfcl.SASRec.load(tmp_path / "junk.npz")


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_items=1), "n_items"),
    (dict(n_items=10, dim=10, heads=3), "heads=3 must divide dim=10"),
    (dict(n_items=10, layers=33), "layers must be an int in 1..32"),
    (dict(n_items=10, max_len=2**31), "max_len must be an int"),
    (dict(n_items=10, dropout=1.0), "dropout"),
    (dict(n_items=10, dim=2.5), "dim must be an int"),
    (dict(n_items=10, layers=0), "layers must be an int in 1..32"),
])
def test_bad_model_config(kwargs, match):
    with pytest.raises(InputError, match=match):
        nfcl.SASRec(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(epochs=0), "epochs"),
    (dict(lr=float("nan")), "lr"),
    (dict(w=-1.0), "w must be"),
    (dict(tau=0.0), "tau"),
    (dict(contrastive="bogus"), "contrastive must be one of"),
    (dict(loss="bpr"), "loss must be one of"),
    (dict(n_neg=-5), "n_neg"),
])
def test_bad_fit_arguments(split, kwargs, match):
    m = nfcl.SASRec(split.train.n_items, dim=8, heads=2, layers=1)
    with pytest.raises(InputError, match=match):
        m.fit(split.train, progress=False, **kwargs)


def test_bad_sequences_and_data(split):
    m = nfcl.SASRec(split.train.n_items, dim=8, heads=2, layers=1)
    with pytest.raises(InputError, match="ids outside"):
        m.recommend([[1, 2, m.n_items]])
    with pytest.raises(InputError, match="non-empty"):
        m.recommend([[]])
    with pytest.raises(InputError, match="integer item ids"):
        m.score([[1.5, 2.0]])
    with pytest.raises(InputError, match="no sequences"):
        m.score([])
    with pytest.raises(InputError, match="train must be"):
        m.fit([[1, 2, 3]], progress=False)
    small = nfcl.SASRec(5, dim=8, heads=2, layers=1)
    with pytest.raises(InputError, match="n_items=5"):
        small.fit(split.train, progress=False)


def test_nan_loss_stops_training_and_keeps_last_good_weights(split):
    m = nfcl.SASRec(split.train.n_items, dim=8, heads=2, layers=1, seed=0)
    m.fit(split.train, epochs=1, progress=False)
    m.weights["head_b"][0] = np.nan  # poisons every prediction vector
    poisoned = m.params.copy()
    with pytest.raises(TrainingError, match=r"step 9: the next-item loss.*after step 8"):
        m.fit(split.train, epochs=1, progress=False)
    np.testing.assert_array_equal(m.params, poisoned)

def test_full_softmax_and_reference_variant_train(split):
    m = nfcl.SASRec(split.train.n_items, dim=8, heads=2, layers=1, seed=1)
    m.fit(split.train, epochs=2, loss="full", contrastive="reference", progress=False)
    assert all(np.isfinite(h["loss"]) for h in m.history)
    assert m.history[-1]["anchors"] > 0


def test_inference_with_non_finite_weights_raises_instead_of_returning_nan():
    m = nfcl.SASRec(100, dim=16, heads=2, max_len=5)
    m.weights["item_emb"][7, 0] = np.nan  # a row used by the input
    for call in (lambda: m.score([[7, 2]]), lambda: m.predict_vectors([[7, 2]])):
        with pytest.raises(FloatingPointError, match="NaN or inf"):
            call()
    m.weights["item_emb"][7, 0] = 0.0
    m.weights["item_emb"][50, 1] = np.inf  # a row only scored, never read
    with pytest.raises(FloatingPointError, match="item table"):
        m.score([[1, 2]])
