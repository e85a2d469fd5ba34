"""A credential in a URL (`s3://KEY:SECRET@bucket/x`) is refused by every command before it does any work,
and neither the key nor the secret reaches any output: stderr, stdout, the run dir (its .lock included).

Every command runs through its public entry point in this process (a refusal happens before any torch work).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from data.prepare import main as prepare_main
from infer.sample import main as sample_main
from train.export import main as export_main

KEY, SECRET = "AKIAEXAMPLEKEY", "wJalr/SECRETxyz"
URL = f"s3://{KEY}:{SECRET}@bucket/datasets/x"
EXIT_CONFIG = 2


def assert_refused_without_leak(code: int | str | None, out: str, err: str) -> None:
    assert code == EXIT_CONFIG, err[-2000:]
    assert KEY not in out + err and SECRET not in out + err, err[-2000:]
    assert err.count("\n") == 1 and "holds a URL with credentials" in err, err[-2000:]
    assert "Traceback" not in err


@pytest.mark.usefixtures("data_root")
@pytest.mark.parametrize("override", [f"data.dir={URL}", f"data.tokenizer.name={URL}"])
def test_train_refuses_a_credential_url_before_the_run_dir_exists(tmp_path: Path, jobs, override) -> None:
    run_dir = tmp_path / "run"
    proc = jobs.in_process(run_dir, override)
    assert_refused_without_leak(proc.returncode, proc.stdout, proc.stderr)
    assert not run_dir.exists()  # no .lock, no config.yaml holding the URL


def test_data_prepare_refuses_a_credential_url_before_tokenizing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exited:
        prepare_main(["data=stdlib_small", f"data.dir={URL}"])
    out, err = capsys.readouterr()
    assert_refused_without_leak(exited.value.code, out, err)
    assert "doc/s" not in err  # no progress bar: nothing was tokenized


@pytest.mark.parametrize("command", [sample_main, export_main], ids=["infer.sample", "train.export"])
def test_infer_and_export_refuse_a_credential_url_source(command, capsys: pytest.CaptureFixture) -> None:
    args = [URL, "--prompt", "def"] if command is sample_main else [URL]
    with pytest.raises(SystemExit) as exited:
        command(args)
    out, err = capsys.readouterr()
    assert_refused_without_leak(exited.value.code, out, err)
