import pytest


@pytest.fixture(scope="module")
def interpreted(request):
    """The JSON report of the requesting test file run as a script under Triton's interpreter."""
    from test_triton_scan import run_interpreted

    return run_interpreted(request.module.__file__)
