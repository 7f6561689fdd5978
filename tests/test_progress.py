"""engines/progress.py: the progress bar and the scalars that every engine's output logs."""

import torch
from ignite.engine import Engine, Events

from monai_cxrssl.engines.progress import ProgressHandler, scalar_outputs


def test_scalars_of_ssl_and_supervised_outputs():
    ssl = {"loss": torch.tensor(1.5), "lr": 0.01, "momentum": torch.tensor([0.5]), "views": torch.zeros(4, 1, 8, 8),
           "flag": True, "name": "x"}
    assert scalar_outputs(ssl) == {"loss": 1.5, "lr": 0.01, "momentum": 0.5}
    decollated = [{"loss": torch.tensor(0.25), "pred": torch.zeros(3)}, {"loss": torch.tensor(9.0)}]
    assert scalar_outputs(decollated) == {"loss": 0.25}  # the first item's, as from_engine(first=True)
    assert scalar_outputs(torch.tensor(2.0)) == {"loss": 2.0}
    assert scalar_outputs(torch.zeros(3)) == {} and scalar_outputs("text") == {}


def test_the_bar_is_attached_unless_disabled_and_shows_the_loss(capsys):
    def step(engine, batch):
        return {"loss": torch.tensor(float(batch))}

    shown = Engine(step)
    ProgressHandler(enabled="true", persist=True).attach(shown)
    shown.run([3, 2, 1], max_epochs=1)
    assert "loss=1" in capsys.readouterr().err  # tqdm writes to stderr

    hidden = Engine(step)
    before = len(hidden._event_handlers[Events.ITERATION_COMPLETED])
    ProgressHandler(enabled="false").attach(hidden)
    assert len(hidden._event_handlers[Events.ITERATION_COMPLETED]) == before  # nothing attached...
    hidden.run([1], max_epochs=1)
    assert capsys.readouterr().err == ""  # ...and nothing shown
