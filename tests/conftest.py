import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_backbone():
    """A random-init tiny CLIP (registered config ``zscir-tiny-test``), shared by the session."""
    from zscir.backbone import load_backbone

    torch.manual_seed(0)
    return load_backbone("zscir-tiny-test", pretrained=None)
