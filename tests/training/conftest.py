import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one torch thread is faster, and the suite shares two cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
