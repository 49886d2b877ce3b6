"""Ctrl-C and SIGTERM: a run stops within seconds, every process it started ends, run.json says
`interrupted`, and `--resume` ends as the uninterrupted run (its own file, so that it runs beside
the kill -9 test)."""

import signal

import pytest

from fedicu.shared.run_dir import RunDirectory
from fedicu.simulations.deployment.processes import with_environment

from .deployments import wait_until
from .interruptions import RESUMABLE, resumes_to, start, stop, uninterrupted, wait_for_round

__all__ = ["uninterrupted"]  # the fixture, used by name


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ctrl_c_stops_the_run_and_every_process_it_started_and_it_resumes_to_the_same_result(tmp_path, uninterrupted):
    stopped = tmp_path / "stopped"
    process, marker = start(stopped, *RESUMABLE)
    try:
        wait_for_round(process, stopped, 2)
    finally:
        stderr = stop(process, stopped, signal.SIGINT, whole_group=True)
    assert process.returncode == 130, stderr
    status = RunDirectory(stopped).read_json("run.json")
    assert status["status"] == "interrupted" and 2 <= status["rounds_completed"] < 4
    assert status["resume_command"] == f"fedicu simulate --resume {stopped}"
    assert f"interrupted (SIGINT): {stopped} keeps round {status['rounds_completed']} of 4" in stderr
    assert "Traceback" not in stderr and "ERROR" not in stderr
    wait_until(lambda: not with_environment("FEDICU_TEST_RUN", marker), 10, "every process of the run to end")
    assert RunDirectory(stopped).load_model("checkpoint.pt")["completed"] == status["rounds_completed"]
    resumes_to(stopped, uninterrupted)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigterm_to_the_command_alone_stops_the_run_with_exit_code_143(tmp_path):
    # A supervisor's SIGTERM reaches only the command (Ray replaces the SIGTERM handler of the
    # process that starts it; the command must keep its own).
    run = tmp_path / "run"
    process, marker = start(run, "--rounds", "20", "--hospitals", "2", "--synthetic-stays", "400", "--hidden-size", "8")
    try:
        wait_for_round(process, run, 1)
    finally:
        stderr = stop(process, run, signal.SIGTERM, whole_group=False)
    assert process.returncode == 143, stderr
    assert "interrupted (SIGTERM)" in stderr
    assert RunDirectory(run).status == "interrupted"
    wait_until(lambda: not with_environment("FEDICU_TEST_RUN", marker), 10, "every process of the run to end")
