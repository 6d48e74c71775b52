import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the Hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import hf_mae  # noqa: E402,F401  (registers the Auto classes)
from hf_mae import MAEConfig  # noqa: E402


def tiny_config(**overrides) -> MAEConfig:
    """A 16x16, 4x4-patch MAE small enough for every test to run in milliseconds."""
    fields = dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=2, decoder_hidden_size=16, decoder_num_hidden_layers=1,
                  decoder_num_attention_heads=2)
    fields.update(overrides)
    return MAEConfig(**fields)


@pytest.fixture
def config() -> MAEConfig:
    return tiny_config()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each in-process training run builds its own Accelerator: reset Accelerate's process-wide singletons."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
