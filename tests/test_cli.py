"Integration tests of the installed `kltn-qat` command (the notebooks hold the unit tests)."
import subprocess, sys, os, shutil
from pathlib import Path
import kltn_qat

EXE = shutil.which('kltn-qat', path=str(Path(sys.executable).parent)) or shutil.which('kltn-qat')

def run(*args):
    env = dict(os.environ, YOLO_OFFLINE='1', YOLO_AUTOINSTALL='false')
    return subprocess.run([EXE, *args], capture_output=True, text=True, env=env, timeout=600)

def test_help_lists_subcommands():
    r = run('--help')
    assert r.returncode == 0, r.stderr
    assert 'version' in r.stdout

def test_version():
    r = run('version')
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == kltn_qat.__version__

def test_every_command_has_help_with_defaults(capsys):
    "Each subcommand's --help answers (its flags are built from the function it calls) and prints defaults (in-process: one import)."
    import pytest
    from kltn_qat.cli import COMMANDS, main
    for name in COMMANDS:
        with pytest.raises(SystemExit) as e: main([*name.split(), '--help'])
        out = capsys.readouterr().out
        assert e.value.code == 0, name
        if name not in ('version', 'report'): assert '(default: ' in out, (name, out)

def test_calibrate_defaults_are_the_functions():
    import inspect
    from kltn_qat.models.ptq import calibrate_checkpoint
    r = run('calibrate', '--help')
    n = inspect.signature(calibrate_checkpoint).parameters['n_images'].default
    assert f'(default: {n})' in ' '.join(r.stdout.split()), r.stdout

def test_out_and_project_name_conflict(tmp_path):
    r = run('train-qat', '--data', 'd.yaml', '--weights', 'w.pt', '--out', str(tmp_path / 'x'), '--name', 'y')
    assert r.returncode == 2 and 'either --out or --name' in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert not (tmp_path / 'x').exists()

def test_predict_help_names_compare():
    r = run('predict', '--help')
    assert r.returncode == 0 and '--compare' in r.stdout and '--source' in r.stdout, r.stdout
