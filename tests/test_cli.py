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
