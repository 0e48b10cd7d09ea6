"""Training progress in a log file: plain lines with step, loss, speed and time left."""

import io
import re

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.demos.boring_classes import BoringModel

from scdl.callbacks.progress import TrainingProgressLines, progress_bar


class _LoggedLoss(BoringModel):
    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        self.log("loss", out["loss"], prog_bar=True)
        return out

    def validation_step(self, batch, batch_idx):
        self.log("val/dice", 0.25)
        return super().validation_step(batch, batch_idx)


def test_training_prints_a_line_every_n_steps_and_per_validation(tmp_path):
    stream = io.StringIO()
    trainer = Trainer(
        max_steps=8,
        limit_val_batches=1,
        val_check_interval=4,
        callbacks=[TrainingProgressLines(every_n_steps=2, every_s=1e9, stream=stream)],
        logger=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=1,
    )
    trainer.fit(_LoggedLoss())
    lines = stream.getvalue().splitlines()
    train = [ln for ln in lines if ln.startswith("train:")]
    assert [int(re.search(r"step (\d+)/8", ln).group(1)) for ln in train] == [2, 4, 6, 8]
    assert all(re.search(r"loss \d+\.\d{3}, [\d.]+ it/s, 0:\d\d elapsed", ln) for ln in train)
    assert "~0:00 left" in train[-1] and "(100%)" in train[-1]
    # one line per validation, none for the sanity check
    assert [ln for ln in lines if ln.startswith("validation")] == [
        "validation at step 4: val/dice 0.2500",
        "validation at step 8: val/dice 0.2500",
    ]
    assert "\r" not in stream.getvalue()


def test_progress_bar_is_tqdm_on_a_terminal_and_lines_in_a_log(monkeypatch):
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    assert isinstance(progress_bar(), TQDMProgressBar)
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    bar = progress_bar(every_n_steps=25)
    assert isinstance(bar, TrainingProgressLines) and bar.every_n_steps == 25
    with pytest.raises(ValueError, match="every_n_steps"):
        TrainingProgressLines(every_n_steps=0)
