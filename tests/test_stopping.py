"""The command line's stop signal handler: outside `noticed_by_flag` it interrupts the main
thread, inside it only sets the flag (Flower's engine must not be interrupted); a second signal
ends the process at once (tested end to end in test_interrupts.py)."""

import signal

import pytest

from fedicu.shared import stopping
from fedicu.simulations import cli


@pytest.fixture
def handler(monkeypatch):
    monkeypatch.setattr(cli, "_received", [])
    yield cli._stop
    stopping._requested.clear()  # one flag per process: this test's own request ends here


def test_a_stop_interrupts_the_main_thread_outside_the_engine(handler):
    with pytest.raises(KeyboardInterrupt):
        handler(signal.SIGTERM, None)
    assert stopping.stop_requested() and cli._received == [signal.SIGTERM]
    with pytest.raises(stopping.StopRequested):
        stopping.check()  # what the waiting server thread then sees


def test_inside_the_engine_a_stop_only_sets_the_flag(handler, capsys):
    with stopping.noticed_by_flag():
        assert not stopping.interrupts_main_thread()
        handler(signal.SIGINT, None)  # no KeyboardInterrupt
    assert stopping.stop_requested() and stopping.interrupts_main_thread()
    assert "stopping once the hospitals' steps under way end" in capsys.readouterr().err
