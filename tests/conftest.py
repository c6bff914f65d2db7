import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``): its models are
    small, and one thread is faster than two on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_backbone():
    """A random-init tiny CLIP (registered config ``zscir-tiny-test``), shared by the session."""
    from zscir.backbone import load_backbone

    torch.manual_seed(0)
    return load_backbone("zscir-tiny-test", pretrained=None)


@pytest.fixture(scope="module")
def features(tmp_path_factory, tiny_backbone):
    """Pooled + token features of 24 random images on the tiny backbone, as the pretrain driver reads them (.npz)."""
    import numpy as np

    torch.manual_seed(5)
    feats = tiny_backbone.encode_image(torch.randn(24, 3, 32, 32), with_tokens=True)
    path = tmp_path_factory.mktemp("feats") / "features.npz"
    np.savez(path, pooled=feats.pooled.numpy().astype(np.float16), tokens=feats.tokens.numpy().astype(np.float16))
    return str(path)
