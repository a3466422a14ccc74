"""Bad input and unsafe files through the installed `kltn-qat` command: every case exits with code 2 and one line that
names the file and what to do, runs no code from a model file, and writes or overwrites nothing."""
import hashlib, os, shutil, subprocess, sys
from pathlib import Path
import pytest, torch

EXE = shutil.which('kltn-qat', path=str(Path(sys.executable).parent)) or shutil.which('kltn-qat')
ENV = dict(os.environ, YOLO_OFFLINE='1', YOLO_AUTOINSTALL='false', YOLO_VERBOSE='false', MPLBACKEND='Agg')

class Payload:
    "Unpickling this runs `touch MARKER`: what a crafted model file can do to a loader that unpickles fully."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (os.system, (f"touch {self.marker}",))

def kq(*args, cwd=None):
    return subprocess.run([EXE, *map(str, args)], env=ENV, capture_output=True, text=True, timeout=900, cwd=cwd)

def digest(p: Path) -> str: return hashlib.sha256(p.read_bytes()).hexdigest()

@pytest.fixture(scope='module')
def w(tmp_path_factory):
    "A tiny dataset, an Ultralytics-format FP32 .pt, a calibrated kltn_qat checkpoint, a malicious .pt and damaged files."
    from ultralytics.nn.tasks import DetectionModel
    from kltn_qat.data import synth_dataset
    from kltn_qat.models.ptq import calibrate_checkpoint
    d = tmp_path_factory.mktemp('safety')
    data = synth_dataset(d / 'ds', train=8, valid=4, test=4, seed=0)
    fp32 = d / 'fp32.pt'
    torch.manual_seed(0)
    torch.save({'model': DetectionModel('yolov8n.yaml', nc=7, verbose=False).half(),
                'train_args': {'imgsz': 64, 'optimizer': 'AdamW', 'lr0': 1e-3, 'lrf': 0.01, 'epochs': 1}}, fp32)
    ptq = calibrate_checkpoint(fp32, data, d / 'ptq.pt', n_images=4, imgsz=64, batch=4, log=lambda *a: None)
    marker = d / 'PWNED'
    evil = d / 'evil.pt'; torch.save({'model': Payload(marker), 'train_args': {'imgsz': 64}}, evil)
    trunc = d / 'truncated.pt'; trunc.write_bytes(ptq.read_bytes()[:5000])
    noise = d / 'noise.pt'; noise.write_bytes(os.urandom(4096))
    bad_onnx = d / 'bad.onnx'; bad_onnx.write_bytes(b'\x08\x07garbage' * 100)
    return {'d': d, 'data': data, 'fp32': fp32, 'ptq': ptq, 'evil': evil, 'marker': marker, 'trunc': trunc,
            'noise': noise, 'bad_onnx': bad_onnx}

# --- a malicious pickle runs in no command --------------------------------------------------------------------
EVIL = {
    'calibrate':        lambda w: ['calibrate', '--data', w['data'], '--weights', w['evil'], '--out', w['d'] / 'x1.pt'],
    'train-qat':        lambda w: ['train-qat', '--data', w['data'], '--weights', w['evil'], '--project', w['d'] / 'r', '--name', 'e1'],
    'train-fp32':       lambda w: ['train-fp32', '--data', w['data'], '--model', w['evil'], '--project', w['d'] / 'r', '--name', 'e2'],
    'evaluate':         lambda w: ['evaluate', '--data', w['data'], '--weights', w['evil']],
    'export --fp32':    lambda w: ['export', '--fp32', '--weights', w['evil'], '--out', w['d'] / 'x.onnx'],
    'analyze error':    lambda w: ['analyze', 'error', '--data', w['data'], '--fp32', w['evil'], '--out', w['d'] / 'e.csv'],
    'analyze sensitivity': lambda w: ['analyze', 'sensitivity', '--data', w['data'], '--weights', w['evil'], '--out', w['d'] / 's.yaml'],
    'benchmark-train':  lambda w: ['benchmark-train', '--weights', w['evil'], '--imgsz', '64', '--steps', '1'],
    'explain':          lambda w: ['explain', '--weights', w['evil']],
}

@pytest.mark.parametrize('cmd', list(EVIL))
def test_malicious_pickle_never_runs(w, cmd):
    r = kq(*EVIL[cmd](w))
    assert not w['marker'].exists(), f"{cmd} executed code from {w['evil']}"
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert 'evil.pt' in r.stderr and '--trust-pickle' in r.stderr and 'Traceback' not in r.stderr, r.stderr[-2000:]

def test_planted_last_pt_is_never_unpickled(w):
    "`--resume` reads the run's own `qat_last.pt` with weights_only; a planted pickle `last.pt` is ignored, a planted `qat_last.pt` refused."
    run = w['d'] / 'r' / 'planted'; (run / 'weights').mkdir(parents=True)
    shutil.copy(w['evil'], run / 'weights' / 'last.pt')
    shutil.copy(w['evil'], run / 'weights' / 'qat_last.pt')
    r = kq('train-qat', '--data', w['data'], '--weights', w['fp32'], '--project', w['d'] / 'r', '--name', 'planted', '--resume')
    assert not w['marker'].exists()
    assert r.returncode == 2 and 'qat_last.pt' in r.stderr and 'Traceback' not in r.stderr, r.stderr[-2000:]

def test_trusted_real_model_still_loads(w):
    "Safe loading is not a wall: a real Ultralytics checkpoint loads without any flag."
    from kltn_qat.models.yolov8_qat import load_fp32
    assert load_fp32(w['fp32']).model[-1].nc == 7

# --- bad input: one clear line, exit code 2, nothing written or overwritten -------------------------------------
BAD = {   # case -> (argv, text the message must contain)
    'calibrate out == weights': (lambda w: ['calibrate', '--data', w['data'], '--weights', w['fp32'], '--out', w['fp32']], 'fp32.pt'),
    'export out == weights':    (lambda w: ['export', '--weights', w['ptq'], '--out', w['ptq']], 'ptq.pt'),
    'export imgsz 100':         (lambda w: ['export', '--weights', w['ptq'], '--out', w['d'] / 'b1.onnx', '--imgsz', '100'], '100'),
    'export imgsz -32':         (lambda w: ['export', '--weights', w['ptq'], '--out', w['d'] / 'b2.onnx', '--imgsz', '-32'], '-32'),
    'export fp32 imgsz 100':    (lambda w: ['export', '--fp32', '--weights', w['fp32'], '--out', w['d'] / 'b3.onnx', '--imgsz', '100'], '100'),
    'export opset 99':          (lambda w: ['export', '--weights', w['ptq'], '--out', w['d'] / 'b4.onnx', '--opset', '99'], '99'),
    'export fp32 missing':      (lambda w: ['export', '--fp32', '--weights', w['d'] / 'nope.pt', '--out', w['d'] / 'b5.onnx'], 'nope.pt'),
    'evaluate corrupt onnx':    (lambda w: ['evaluate', '--data', w['data'], '--weights', w['bad_onnx']], 'bad.onnx'),
    'benchmark corrupt onnx':   (lambda w: ['benchmark', w['bad_onnx'], '--runs', '1', '--warmup', '0'], 'bad.onnx'),
    'truncated checkpoint':     (lambda w: ['export', '--weights', w['trunc'], '--out', w['d'] / 'b6.onnx'], 'truncated.pt'),
    'random bytes as model':    (lambda w: ['calibrate', '--data', w['data'], '--weights', w['noise'], '--out', w['d'] / 'b7.pt'], 'noise.pt'),
    'kltn_qat ckpt as --fp32':  (lambda w: ['analyze', 'error', '--data', w['data'], '--fp32', w['ptq'], '--out', w['d'] / 'b8.csv'], 'ptq.pt'),
    'fp32 .pt as --qat':        (lambda w: ['analyze', 'error', '--data', w['data'], '--fp32', w['fp32'], '--qat', w['fp32'], '--out', w['d'] / 'b9.csv'], 'fp32.pt'),
    'resume without a run':     (lambda w: ['train-qat', '--data', w['data'], '--weights', w['fp32'], '--project', w['d'] / 'r', '--name', 'none', '--resume'], 'none'),
}

@pytest.mark.parametrize('case', list(BAD))
def test_bad_input(w, case):
    argv, must = BAD[case]
    argv = argv(w)
    before = {p: digest(p) for p in w['d'].glob('*.pt')}
    files_before = set(w['d'].rglob('*'))
    r = kq(*argv)
    assert r.returncode == 2, (case, r.returncode, r.stderr[-2000:])
    err = r.stderr.strip().splitlines()
    assert err and err[-1].startswith('kltn-qat') and must in err[-1] and 'Traceback' not in r.stderr, (case, r.stderr[-2000:])
    assert {p: digest(p) for p in w['d'].glob('*.pt')} == before, f"{case} changed an input file"
    new = {p for p in set(w['d'].rglob('*')) - files_before if p.suffix in ('.pt', '.onnx', '.csv', '.yaml')}
    assert not new, f"{case} wrote {sorted(new)}"

def test_finished_run_is_not_resumed(w):
    "A `qat_last.pt` whose run finished all its epochs: a clear message, not an AssertionError from deep inside Ultralytics."
    from kltn_qat.models.yolov8_qat import load_checkpoint, save_checkpoint
    m, info = load_checkpoint(w['ptq'])
    run = w['d'] / 'r' / 'finished'
    save_checkpoint(m, run / 'weights' / 'qat_last.pt', imgsz=64,
                    extra={**info['extra'], 'resume': {'epoch': 2, 'train_args': {'epochs': 3}}})
    r = kq('train-qat', '--data', w['data'], '--weights', w['fp32'], '--project', w['d'] / 'r', '--name', 'finished', '--resume')
    assert r.returncode == 2 and 'finished all 3 epochs' in r.stderr and 'Traceback' not in r.stderr, r.stderr[-2000:]

def test_read_only_output_folder(w):
    ro = w['d'] / 'ro'; ro.mkdir(exist_ok=True); ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK): pytest.skip('running as a user who can write anywhere (root)')
        r = kq('calibrate', '--data', w['data'], '--weights', w['fp32'], '--out', ro / 'q.pt')
        assert r.returncode == 2 and 'not writable' in r.stderr, r.stderr[-2000:]
    finally: ro.chmod(0o755)

def test_existing_run_folder_gets_a_new_name(w):
    "`train-fp32` into an existing PROJECT/NAME writes NAME2 (as Ultralytics names runs) and leaves the first run alone."
    from kltn_qat.core import run_dir
    (w['d'] / 'r' / 'taken').mkdir(parents=True, exist_ok=True)
    assert run_dir(w['d'] / 'r', 'taken') == w['d'] / 'r' / 'taken2'
