import pytest

from pcr.pipelines import load_pipeline


@pytest.fixture(scope="module", params=["tiny-sd", "tiny-sdxl"])
def pipe(request):
    pipe = load_pipeline(request.param)
    pipe.set_progress_bar_config(disable=True)
    return pipe
