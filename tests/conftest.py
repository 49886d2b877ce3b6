import signal
from pathlib import Path

import pytest

from fedicu.shared import stopping
from fedicu.simulations.deployment import certs
from fedicu.simulations.deployment.rehearsal import LocalDeployment
from tests.deployments import SITES, live_processes

PHYSIONET_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "physionet2012"

_physionet_absent = pytest.mark.skipif(
    not (PHYSIONET_DIR / "set-a.tar.gz").exists(),
    reason=f"PhysioNet 2012 data not found at {PHYSIONET_DIR} (get it from PhysioNet to run this test)",
)


def requires_physionet(test):
    """Reads the PhysioNet 2012 files: marked `realdata`, skipped with a reason when they are absent."""
    return pytest.mark.realdata(_physionet_absent(test))


# Tests of more than about 20 s on two cores (`pytest -m "not slow"` leaves them out), by file and
# name; a module-scoped fixture's cost counts for the tests that use it.
SLOW = {
    "test_faults.py": [
        "test_a_run_killed_after_round_two_resumes_to_the_same_result",
        "test_a_straggler_past_the_round_timeout_is_skipped_every_round",
    ],
    "test_bench.py": ["test_quick_bench_ends_with_one_json_object_holding_the_goal_figures"],
    "test_simulation.py": [
        "test_three_hospitals_two_rounds_beat_chance_and_write_a_complete_run",
        "test_evaluate_scores_a_saved_model_as_json",
        "test_an_existing_run_directory_is_never_overwritten",
        "test_each_hospital_is_scored_on_its_own_test_split_and_its_numbers_follow_from_the_saved_predictions",
        "test_every_hospital_scores_the_final_models_and_keeps_recalibration_maps_that_reproduce_its_numbers",
        "test_evaluate_goes_through_a_site_s_map_and_refuses_a_map_of_another_model",
        "test_the_cross_site_command_rebuilds_the_sites_numbers_and_refuses_runs_it_cannot_score_honestly",
        "test_evaluate_per_icu_type_scores_each_unit_as_a_site_would",
    ],
    "test_validate.py": [
        "test_every_hospital_is_held_out_once_by_a_model_that_never_saw_its_stays",
        "test_the_included_score_is_the_full_federations_score_at_that_hospital",
    ],
    "test_sweep.py": [
        "test_every_cell_lands_in_the_csv_with_accuracy_privacy_and_audit",
        "test_a_rerun_skips_finished_cells_and_reruns_an_unfinished_one",
        "test_a_sweep_directory_is_not_mixed_with_other_settings",
    ],
    "test_secure_aggregation.py": ["test_secure_aggregation_works_with_fedadam_and_dp_sgd"],
    "test_compare.py": [
        "test_every_setting_is_summarized_from_its_own_run",
        "test_each_seed_is_compared_in_its_own_folder_and_the_summary_is_their_mean",
    ],
    "test_ensemble.py": [
        "test_the_members_are_runs_on_one_split_and_evaluate_scores_their_mean",
        "test_evaluate_refuses_what_it_cannot_score_as_one_ensemble",
        "test_a_resumed_ensemble_keeps_its_complete_members_and_trains_the_missing_one",
    ],
    "test_contract.py": ["test_each_strategy_and_protection_runs_end_to_end_through_the_contract"],
    "test_data_cli.py": ["test_training_prints_one_line_about_skipped_rows_and_the_model_card_records_them"],
    "test_tracking.py": ["test_the_simulation_engine_run_of_the_command_line_is_tracked_the_same"],
    "test_report.py": [  # start a browser (apt-get installs it where it is absent)
        "test_in_chromium_every_figure_renders_and_nothing_fails",
        "test_the_browser_check_sees_errors_failed_images_and_requests",
    ],
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = item.path.name
        if path.startswith("test_deployment"):
            item.add_marker(pytest.mark.deploy)
            item.add_marker(pytest.mark.slow)
        if item.originalname in SLOW.get(path, []):  # type: ignore[attr-defined]
            item.add_marker(pytest.mark.slow)
        if any("PhysioNet" in str(mark.kwargs.get("reason", "")) for mark in item.iter_markers("skipif")):
            item.add_marker(pytest.mark.realdata)


@pytest.fixture(autouse=True)
def _one_command_per_test():
    """A test that runs the command line in this process leaves the process as it found it: the
    signal handlers `main` installs and the stop flag are per process (a process runs one
    command), and a flag left set would end the next command at once, this worker with it."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    left_set = stopping.stop_requested()
    stopping._requested.clear()
    assert not left_set, "the test left the process's stop flag set"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Tests never read or write the user's cache."""
    monkeypatch.setenv("FEDICU_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def deployment(tmp_path):
    """A deployment with the CA, SuperLink certificate and site keys; nothing started yet."""
    certs.create(tmp_path / "certs", ["127.0.0.1"], SITES)
    with LocalDeployment(tmp_path, SITES) as started:
        yield started
    assert live_processes(tmp_path) == []
