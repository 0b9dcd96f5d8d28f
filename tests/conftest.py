import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The test models are tiny: one thread is fastest, and two spin-wait on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def pcr_cache(tmp_path_factory):
    """Keep the tokenizer cache (and anything else pcr caches) out of the home folder."""
    old = os.environ.get("PCR_CACHE")
    os.environ["PCR_CACHE"] = str(tmp_path_factory.mktemp("pcr_cache"))
    yield
    if old is None:
        os.environ.pop("PCR_CACHE", None)
    else:
        os.environ["PCR_CACHE"] = old
