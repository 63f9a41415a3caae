"""The listening simulator: determinism, calibrated skip rate, skips track low affinity."""
import numpy as np
import pytest

from nfcl import sessions
from nfcl.errors import InputError
from nfcl.simulate import ListeningSimulator, true_affinity_at_k

SMALL = dict(n_users=20, n_items=120, n_sessions=150, session_len=10, dim=6)


def _same(a, b):
    for name in ("items", "skips", "times", "offsets", "users"):
        if not np.array_equal(getattr(a, name), getattr(b, name)):
            return False
    return True


def test_deterministic_by_seed():
    a = ListeningSimulator(seed=3, **SMALL).sessions()
    b = ListeningSimulator(seed=3, **SMALL).sessions()
    c = ListeningSimulator(seed=4, **SMALL).sessions()
    assert _same(a, b) and a.fingerprint() == b.fingerprint()
    assert not _same(a, c)


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5])
def test_skip_rate_and_affinity(rate):
    sim = ListeningSimulator(skip_rate=rate, seed=0, **SMALL)
    ses = sim.sessions()
    assert ses.n_events == 150 * 10 and ses.n_items == 121
    assert ses.skip_rate == pytest.approx(rate, abs=0.03)
    users = np.repeat(ses.users, ses.lengths)
    aff = sim.true_affinity(users, ses.items[:, None])[:, 0]
    assert aff[ses.skips == 1].mean() < aff[ses.skips == 0].mean() - 0.1
    # sessions follow taste: kept plays are liked more than random items are
    assert aff[ses.skips == 0].mean() > sim.affinity.mean() + 0.1


def test_sequential_component():
    """With the sequence weight on, consecutive kept tracks are closer."""
    def closeness(sequence):
        sim = ListeningSimulator(sequence=sequence, taste=0.2, explore=0.0, seed=1,
                                 **SMALL)
        ses = sim.sessions()
        it = ses.items.reshape(150, 10) - 1
        v = sim.item_vecs
        return float(np.mean(np.sum(v[it[:, 1:]] * v[it[:, :-1]], axis=-1)))
    assert closeness(2.0) > closeness(0.0) + 0.1


def test_true_affinity_at_k_orders_recommenders():
    sim = ListeningSimulator(seed=0, **SMALL)
    ses = sim.sessions()
    split = sessions.leave_last_out(ses, max_len=8)
    users = ses.users[split.test.session]

    class Oracle:  # recommends each user's truly best items
        def recommend(self, ex, k=10):
            return np.argsort(-sim.affinity[users], axis=1)[:, :k] + 1

    class Worst:
        def recommend(self, ex, k=10):
            return np.argsort(sim.affinity[users], axis=1)[:, :k] + 1

    best = true_affinity_at_k(Oracle(), split.test, ses, sim)
    worst = true_affinity_at_k(Worst(), split.test, ses, sim)
    assert 0.5 < best <= 1.0 and -1.0 <= worst < -0.5


def test_bad_arguments():
    with pytest.raises(InputError):
        ListeningSimulator(skip_rate=0.0)
    with pytest.raises(InputError):
        ListeningSimulator(n_items=0)
    sim = ListeningSimulator(seed=0, **SMALL)
    with pytest.raises(InputError):
        sim.true_affinity([0], [[0]])
