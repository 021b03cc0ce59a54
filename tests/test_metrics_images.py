"""Image-quality metrics: Fréchet distance, KID, IS, the shipped digit classifier, Inception plumbing.

No test touches the network: torch.hub's download is replaced by one that raises, and the Inception
code paths run with a stand-in extractor (or torch-fidelity's network with random weights).
"""

import datetime
import math
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ebmlab.metrics import digits as D
from ebmlab.metrics import inception as I
from ebmlab.metrics.frechet import (
    feature_stats,
    frechet_distance,
    frechet_distance_features,
    inception_score,
    kernel_distance,
)


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No downloads, an empty torch.hub cache and a private stats cache for every test."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    if "torch_fidelity.feature_extractor_inceptionv3" in sys.modules:
        monkeypatch.setattr(sys.modules["torch_fidelity.feature_extractor_inceptionv3"],
                            "load_state_dict_from_url", refuse)
    monkeypatch.delenv(I.WEIGHTS_ENV, raising=False)
    monkeypatch.setenv(I.CACHE_ENV, str(tmp_path / "cache"))


def _rotation(d, seed):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


# ---------------------------------------------------------------------------------------------
# Fréchet distance
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("eigs1, eigs2", [
    ([4.0, 1.0, 0.25, 2.0], [1.0, 1.0, 1.0, 1.0]),
    ([1.0, 1e-12, 0.0, 3.0], [2.0, 0.0, 1e-14, 0.5]),  # near-singular and singular
    ([0.0] * 4, [1.0, 2.0, 3.0, 4.0]),  # a point mass against a Gaussian
])
def test_frechet_commuting_closed_form(eigs1, eigs2):
    # Covariances sharing eigenvectors: FD = |mu1 - mu2|² + sum_i (sqrt(a_i) - sqrt(b_i))².
    q = _rotation(4, 0)
    a, b = torch.tensor(eigs1, dtype=torch.float64), torch.tensor(eigs2, dtype=torch.float64)
    s1, s2 = q @ torch.diag(a) @ q.T, q @ torch.diag(b) @ q.T
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0, 0.5]), torch.tensor([1.0, 1.0, 0.0, 0.0])
    expected = float((mu1 - mu2).pow(2).sum() + (a.sqrt() - b.sqrt()).pow(2).sum())
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_frechet_2d_non_commuting_closed_form():
    # For 2x2 PSD matrices, tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)) with M = S1 S2 (real eigenvalues >= 0).
    s1 = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)  # rank 1
    s2 = torch.tensor([[2.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
    m = s1 @ s2
    tr_sqrt = math.sqrt(float(m.trace()) + 2 * math.sqrt(max(float(torch.linalg.det(m)), 0.0)))
    expected = 1.0 + float(s1.trace() + s2.trace()) - 2 * tr_sqrt
    assert frechet_distance(torch.zeros(2), s1, torch.tensor([1.0, 0.0]), s2) == pytest.approx(expected, rel=1e-10)


def test_frechet_equal_singular_covariances():
    # Rank 3 in 64 dimensions (fewer samples than dimensions): only the mean term survives.
    g = torch.Generator().manual_seed(1)
    f = torch.randn(4, 64, generator=g, dtype=torch.float64)
    mu, s = feature_stats(f)
    shift = torch.zeros(64, dtype=torch.float64)
    shift[3] = 0.5
    d = frechet_distance(mu, s, mu + shift, s)
    assert d == pytest.approx(0.25, abs=1e-8 * float(s.trace()))
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-8 * float(s.trace()))


@pytest.mark.parametrize("n, d", [(300, 32), (2000, 8)])
def test_frechet_matches_scipy(n, d):
    scipy_linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(n + d)
    f1 = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)
    f2 = 0.3 + torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.2, 2, d, dtype=torch.float64)
    mu1, s1 = f1.mean(0).numpy(), np.cov(f1.numpy(), rowvar=False)
    mu2, s2 = f2.mean(0).numpy(), np.cov(f2.numpy(), rowvar=False)
    covmean = scipy_linalg.sqrtm(s1 @ s2)
    ref = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)
    assert frechet_distance_features(f1, f2) == pytest.approx(ref, rel=1e-7)
    assert frechet_distance_features(f1.float(), f2.float()) == pytest.approx(ref, rel=1e-4)


def test_feature_stats_match_numpy():
    f = torch.randn(50, 6, generator=torch.Generator().manual_seed(2))
    mu, s = feature_stats(f)
    assert mu.dtype == torch.float64 and s.shape == (6, 6)
    np.testing.assert_allclose(s.numpy(), np.cov(f.double().numpy(), rowvar=False), rtol=1e-10)


def test_frechet_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        feature_stats(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(2), torch.eye(2))
    with pytest.raises(ValueError, match="at least 2"):
        feature_stats(torch.zeros(1, 4))


# ---------------------------------------------------------------------------------------------
# KID and Inception Score
# ---------------------------------------------------------------------------------------------

def test_kernel_distance_matches_direct_formula():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(40, 5, generator=g).double(), torch.randn(40, 5, generator=g).double() + 0.5
    k = lambda a, b: (a @ b.T / 5 + 1) ** 3  # noqa: E731
    kxx, kyy, kxy = k(x, x).numpy(), k(y, y).numpy(), k(x, y).numpy()
    m = 40
    ref = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()
    mean, std = kernel_distance(x, y, subsets=3, subset_size=1000)  # subsets = whole sets, permuted
    assert mean == pytest.approx(ref, rel=1e-10) and std == pytest.approx(0.0, abs=1e-10)


def test_kernel_distance_separates_distributions():
    g = torch.Generator().manual_seed(4)
    a, b, c = (torch.randn(400, 16, generator=g) for _ in range(3))
    same, _ = kernel_distance(a, b, subsets=10, subset_size=200)
    diff, std = kernel_distance(a, c + 0.5, subsets=10, subset_size=200)
    assert abs(same) < 0.1 * diff
    assert kernel_distance(a, c + 0.5, subsets=10, subset_size=200) == (diff, std)  # seeded subsets


def test_inception_score_extremes():
    k = 10
    onehot = torch.eye(k).repeat(20, 1)  # confident and balanced
    assert inception_score(onehot, splits=4)[0] == pytest.approx(k)
    assert inception_score(onehot, splits=4)[1] == pytest.approx(0.0, abs=1e-12)
    assert inception_score(torch.eye(k)[[3] * 50], splits=1)[0] == pytest.approx(1.0)
    assert inception_score(torch.full((50, k), 1 / k), splits=5)[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="probabilities"):
        inception_score(torch.randn(10, k))


# ---------------------------------------------------------------------------------------------
# the shipped digit classifier
# ---------------------------------------------------------------------------------------------

def test_shipped_weights_are_a_small_plain_state_dict():
    assert D.WEIGHTS_PATH.is_file()
    assert D.WEIGHTS_PATH.stat().st_size < 500_000
    state = torch.load(D.WEIGHTS_PATH, map_location="cpu", weights_only=True)
    assert set(state) == set(D.LeNet().state_dict())
    assert all(t.dtype == torch.float32 for t in state.values())


def test_heldout_accuracy_meets_docstring():
    assert f"Held-out accuracy: {D.HELDOUT_ACCURACY:.1%}" in D.__doc__
    _, _, xh, yh = D.mnist5k()
    with torch.no_grad():
        acc = (D.load_classifier()(D.prepare_digits(xh)).argmax(1) == yh).double().mean().item()
    assert acc >= D.HELDOUT_ACCURACY - 1e-9


@pytest.mark.parametrize("size", [28, 32])
def test_real_heldout_digits_score_well(size):
    _, _, xh, _ = D.mnist5k(size)
    m = D.digit_metrics(xh)  # reference: the same digits at the same size
    assert set(m) == {"lenet_fid", "classifier_is", "mode_coverage", "confident_frac"}
    assert m["mode_coverage"] == 1.0
    assert m["confident_frac"] >= 0.95
    assert m["classifier_is"] > 9.0
    assert m["lenet_fid"] == pytest.approx(0.0, abs=1e-4)  # same features: rounding only


def test_uniform_noise_scores_poorly():
    base = D.real_data_baseline()
    noise = torch.rand(1000, 1, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
    m = D.digit_metrics(noise)
    assert m["mode_coverage"] <= 0.2
    assert m["confident_frac"] <= 0.05
    assert m["classifier_is"] < 1.5
    assert m["lenet_fid"] > 20 * base["lenet_fid"]


def test_real_data_baseline():
    base = D.real_data_baseline()
    assert base["mode_coverage"] == 1.0 and base["confident_frac"] >= 0.95 and base["classifier_is"] > 9
    assert 0 < base["lenet_fid"] < 30
    assert D.real_data_baseline() == base  # cached and deterministic


def test_digit_metrics_speed_cold():
    D._CLASSIFIERS.clear()
    D._HELDOUT_STATS.clear()
    x = torch.rand(1000, 1, 32, 32, generator=torch.Generator().manual_seed(6)) * 2 - 1
    t = time.perf_counter()
    D.digit_metrics(x)  # includes loading the classifier and the held-out reference
    assert time.perf_counter() - t < 10.0
    assert D.load_classifier() is D.load_classifier("cpu")  # cached per device


def test_coverage_and_confidence_rules():
    probs = torch.zeros(200, 10)
    probs[:, 0] = 1.0
    probs[100:, 0], probs[100:, 1] = 0.5, 0.5  # argmax 0 (first max), not confident
    probs[198:, :] = 0.0
    probs[198:, 7] = 1.0  # class 7: 2 of 200 = 1% -> covered at 1%, not at 2%
    assert D.mode_coverage(probs) == pytest.approx(0.2)
    assert D.mode_coverage(probs, min_share=0.02) == pytest.approx(0.1)
    assert D.confident_frac(probs) == pytest.approx(102 / 200)


def test_digit_inputs():
    with pytest.raises(ValueError, match="grayscale"):
        D.digit_metrics(torch.zeros(10, 3, 28, 28))
    x = torch.rand(20, 1, 28, 28, generator=torch.Generator().manual_seed(7)) * 2 - 1
    x[0, 0, 0, 0] = float("nan")  # a diverged chain: poor but finite numbers, no exception
    assert all(math.isfinite(v) for v in D.digit_metrics(x.double()).values())


# ---------------------------------------------------------------------------------------------
# Inception-v3 plumbing, offline
# ---------------------------------------------------------------------------------------------

class StandIn:
    """Images [N, 3, H, W] -> (features [N, 16], logits [N, 10]) from a fixed random projection."""

    name = "standin-test"

    def __init__(self, logits=True):
        g = torch.Generator().manual_seed(0)
        self.w, self.v = torch.randn(48, 16, generator=g), torch.randn(16, 10, generator=g)
        self.calls, self.logits = 0, logits

    def __call__(self, x):
        assert x.ndim == 4 and x.shape[1] == 3 and x.min() >= -1 and x.max() <= 1
        self.calls += 1
        f = F.adaptive_avg_pool2d(x.float(), 4).flatten(1) @ self.w.to(x.device)
        return (f, f @ self.v.to(x.device)) if self.logits else f


def _images(n, seed, c=1, size=28):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, c, size // 4, size // 4, generator=g) * 2 - 1).repeat_interleave(4, -1).repeat_interleave(4, -2)


def test_real_stats_cache_roundtrip(tmp_path):
    ext, imgs = StandIn(), _images(300, 0)
    s1 = I.real_stats("toyimgs", images=imgs, extractor=ext, cache_dir=tmp_path)
    path = tmp_path / "toyimgs_heldout_300_28px_standin-test.pt"
    assert path.is_file() and ext.calls > 0
    on_disk = torch.load(path, weights_only=True)
    assert set(on_disk) >= {"mu", "sigma", "features", "n", "extractor", "version"}
    assert on_disk["features"].shape == (300, 16) and on_disk["sigma"].dtype == torch.float64
    calls = ext.calls
    s2 = I.real_stats("toyimgs", images=imgs, extractor=ext, cache_dir=tmp_path)
    assert ext.calls == calls and torch.equal(s1["sigma"], s2["sigma"])  # read back, not recomputed
    I.real_stats("toyimgs", images=imgs, extractor=ext, cache_dir=tmp_path, overwrite=True)
    assert ext.calls > calls
    I.real_stats("toyimgs", n=100, images=imgs, extractor=ext, cache_dir=tmp_path)
    assert (tmp_path / "toyimgs_heldout_100_28px_standin-test.pt").is_file()


def test_real_stats_loads_dataset_once(monkeypatch):
    ext = StandIn()
    s = I.real_stats("mnist5k", "heldout", n=200, extractor=ext)  # default cache dir: $EBMLAB_CACHE_DIR
    assert (I.stats_cache_dir() / "mnist5k_heldout_200_28px_standin-test.pt").is_file()
    assert s["n"] == 200 and s["mu"].shape == (16,)

    def no_load(*args, **kwargs):
        raise AssertionError("cached statistics must not reload the dataset")

    monkeypatch.setattr(I, "_load_real_images", no_load)
    assert torch.equal(I.real_stats("mnist5k", "heldout", n=200, extractor=ext)["mu"], s["mu"])


def test_inception_metrics_with_stand_in(tmp_path, monkeypatch):
    ext = StandIn()
    loaded = []
    # the dataset-loading path itself is covered by test_real_stats_loads_dataset_once
    monkeypatch.setattr(I, "_load_real_images", lambda name, split, size, root: loaded.append(size) or _images(
        300, 9, size=size))
    real = _images(400, 1)
    ref = I.real_stats("toyimgs", images=real, extractor=ext, cache_dir=tmp_path)
    kw = dict(reference=ref, extractor=ext, kid_subsets=10, kid_subset_size=200)
    good = I.inception_metrics(_images(400, 2), **kw)
    bad = I.inception_metrics(_images(400, 3) * 0.2 - 0.7, **kw)
    assert set(good) == {"inception_fid", "inception_kid", "inception_kid_std", "inception_is",
                         "inception_is_std", "inception_n"}
    assert good["inception_fid"] < 0.1 * bad["inception_fid"]
    assert abs(good["inception_kid"]) < 0.1 * bad["inception_kid"]
    assert 1.0 <= good["inception_is"] <= 10.0
    # dataset path: statistics of the real split computed at the samples' resolution and cached
    m = I.inception_metrics(_images(64, 4, size=32), dataset="mnist5k", n_real=100, extractor=ext,
                            cache_dir=tmp_path, kid_subsets=5)
    assert (tmp_path / "mnist5k_heldout_100_32px_standin-test.pt").is_file() and loaded == [32]
    assert m["inception_n"] == 64 and math.isfinite(m["inception_fid"])


def test_inception_metrics_features_only_extractor(tmp_path):
    ext = StandIn(logits=False)
    rgb = _images(100, 5, c=3)
    ref = I.real_stats("rgb", images=rgb, extractor=ext, cache_dir=tmp_path)
    m = I.inception_metrics(_images(50, 6, c=3), reference=ref, extractor=ext, kid=False)
    assert set(m) == {"inception_fid", "inception_n"}


def test_grayscale_is_repeated_to_three_channels():
    seen = []
    feats, logits = I.extract_features(_images(5, 7), lambda x: seen.append(x) or x.flatten(1)[:, :4])
    assert seen[0].shape == (5, 3, 28, 28) and torch.equal(seen[0][:, 0], seen[0][:, 2])
    assert feats.shape == (5, 4) and logits is None


def test_missing_weights_file_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(I.InceptionUnavailableError, match="digit_metrics") as e:
        I.inception_metrics(_images(4, 0), weights=tmp_path / "nope.pth")
    assert I.WEIGHTS_ENV in str(e.value) and "nope.pth" in str(e.value)
    monkeypatch.setenv(I.WEIGHTS_ENV, str(tmp_path / "also-nope.pth"))
    with pytest.raises(I.InceptionUnavailableError, match="also-nope"):
        I.get_inception()


def test_no_network_is_a_clear_error():
    # no weights given, none cached, download refused (the autouse fixture): error, not a hang or a crash
    with pytest.raises(I.InceptionUnavailableError, match="downloading the weights failed"):
        I.real_stats("cifar10")
    with pytest.raises(I.InceptionUnavailableError, match="LeNet"):
        I.inception_weights_path(download=False)


def test_missing_torch_fidelity_is_a_clear_error(tmp_path, monkeypatch):
    w = tmp_path / "w.pth"
    torch.save({"x": torch.zeros(1)}, w)
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", None)
    with pytest.raises(I.InceptionUnavailableError, match="pip install torch-fidelity"):
        I.InceptionExtractor(w)


def test_wrong_weights_files_are_clear_errors(tmp_path):
    pytest.importorskip("torch_fidelity")
    wrong = tmp_path / "wrong.pth"
    torch.save({"x": torch.zeros(1)}, wrong)
    with pytest.raises(I.InceptionUnavailableError, match="does not hold the Inception weights"):
        I.InceptionExtractor(wrong)
    code = tmp_path / "pickle.pth"
    torch.save({"when": datetime.date(2020, 1, 1)}, code)  # not loadable with weights_only=True
    with pytest.raises(I.InceptionUnavailableError, match="not a plain state_dict"):
        I.InceptionExtractor(code)


def test_torch_fidelity_extractor_with_random_weights(tmp_path, monkeypatch):
    """The real wrapper around torch-fidelity's network, with random weights instead of the download."""
    tf = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    with monkeypatch.context() as mp:  # build the architecture without loading anything
        mp.setattr(tf, "load_state_dict_from_url", lambda *a, **k: {})
        mp.setattr(tf.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        torch.manual_seed(0)
        state = tf.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict()
    w = tmp_path / "random-inception.pth"
    torch.save(state, w)
    monkeypatch.setenv(I.WEIGHTS_ENV, str(w))
    ext = I.get_inception()
    feats, logits = I.extract_features(_images(2, 8), ext)
    assert feats.shape == (2, 2048) and logits.shape == (2, 1008)
    assert torch.isfinite(feats).all() and torch.isfinite(logits).all()
