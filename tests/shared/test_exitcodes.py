import subprocess
import sys

from corral.shared import exitcodes
from corral.shared.exitcodes import ExitCode


def test_values_are_the_contract():
    assert exitcodes.OK == 0
    assert exitcodes.CONFIG_ERROR == 2
    assert exitcodes.WORKER_BOOT_ERROR == 3
    assert exitcodes.APP_IMPORT_ERROR == 4
    assert exitcodes.HALT_CRASH_LOOP == 5


def test_codes_are_distinct_and_documented():
    assert len({int(code) for code in ExitCode}) == len(ExitCode)
    for code in ExitCode:
        assert ExitCode(int(code)) is code


def test_usable_as_process_exit_status():
    code = subprocess.call(
        [
            sys.executable,
            "-c",
            "import sys; from corral.shared.exitcodes import APP_IMPORT_ERROR; sys.exit(APP_IMPORT_ERROR)",
        ]
    )
    assert code == 4
