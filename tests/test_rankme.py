"""RankMe, the label-free comparison of pretrained encoders: the formula, its errors, and the command line on
embedding folders as the pretraining bundles' ``inference.json`` writes them."""

import json

import numpy as np
import pytest
import torch
from monai.engines import SupervisedEvaluator

from monai_cxrssl.__main__ import main
from monai_cxrssl.data import ViewBatch
from monai_cxrssl.engines import FastInferer
from monai_cxrssl.evaluation import EmbeddingWriter, rank_encoders, rankme
from monai_cxrssl.exceptions import CXRSSLError


def _reference(z, eps=1e-7):
    s = np.linalg.svd(np.asarray(z, dtype=np.float64), compute_uv=False)
    p = s / s.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def test_rankme_is_the_entropy_of_the_normalised_singular_values():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(200, 32)) @ np.diag(np.linspace(3.0, 0.1, 32))
    assert rankme(z) == pytest.approx(_reference(z), rel=1e-9)
    # equal singular values: the full rank; one direction: 1; scale-free
    assert rankme(np.eye(16)) == pytest.approx(16.0, rel=1e-4)
    assert rankme(np.outer(rng.normal(size=50), rng.normal(size=8))) == pytest.approx(1.0, abs=1e-3)
    assert rankme(7.5 * z) == pytest.approx(rankme(z), rel=1e-9)
    # dropping half the directions lowers it
    assert rankme(z[:, :16]) < rankme(z)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((4, 3)), "zero"),
    (np.ones((1, 3)), "N >= 2"),
    (np.ones(5), "N >= 2"),
    (np.array([[1.0, np.nan], [0.0, 1.0]]), "NaN"),
])
def test_rankme_rejects_what_it_cannot_rank(bad, match):
    with pytest.raises(ValueError, match=match):
        rankme(bad)


class _Collapsing(torch.nn.Module):
    """An encoder whose features are one direction plus a little noise: what a collapsed SSL run gives."""

    def __init__(self, dim=64):
        super().__init__()
        self.direction = torch.nn.Parameter(torch.randn(dim), requires_grad=False)

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))[:, None]
        return m * self.direction + 1e-3 * x.flatten(1)[:, : self.direction.numel()]


def _embed(network, out_dir, n=48, size=16):
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(n, 1, size, size, generator=gen)
    batches = [{"image": images[i:i + 16], "path": [f"img{j}.png" for j in range(i, i + 16)],
                "patient_id": [f"p{j}" for j in range(i, i + 16)]} for i in range(0, n, 16)]
    SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=batches, network=network,
                        inferer=FastInferer("fp32", channels_last=False), prepare_batch=ViewBatch(),
                        val_handlers=[EmbeddingWriter(out_dir)], decollate=False).run()
    return out_dir


def test_command_line_ranks_a_spread_encoder_above_a_collapsed_one(tmp_path, capsys):
    torch.manual_seed(0)
    spread = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 64))
    a = _embed(spread, tmp_path / "spread")
    b = _embed(_Collapsing(), tmp_path / "collapsed")
    assert main(["rankme", f"collapsed={b}", f"spread={a}", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["spread", "collapsed"]
    assert rows[0]["selected"] and not rows[1]["selected"]
    assert rows[0]["n_images"] == 48 and rows[0]["dim"] == 64
    assert rows[1]["rankme"] < 3 < 20 < rows[0]["rankme"]
    assert main(["rankme", f"spread={a}", f"collapsed={b}"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[2].startswith("| spread | 48 | 64 |") and "| yes |" in table.splitlines()[2]


def test_candidates_must_embed_the_same_images(tmp_path, capsys):
    torch.manual_seed(0)
    a = _embed(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 64)), tmp_path / "a", n=48)
    b = _embed(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 64)), tmp_path / "b", n=32)
    with pytest.raises(CXRSSLError, match="embed different images"):
        rank_encoders({"a": a, "b": b})
    with pytest.raises(CXRSSLError, match=r"candidate 'c': no embeddings.npy in"):
        rank_encoders({"a": a, "c": tmp_path / "nowhere"})
    assert main(["rankme", f"a={a}", "b"]) == 1
    assert "'b' is not NAME=EMBEDDINGS_FOLDER" in capsys.readouterr().err
    assert main(["rankme", f"a={a}", f"a={a}"]) == 1
    assert "given twice" in capsys.readouterr().err
