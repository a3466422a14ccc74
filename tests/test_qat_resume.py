"Kill-and-resume of a QAT run through the `kltn-qat` command (integration test, tiny sizes)."
import csv, os, shutil, signal, subprocess, sys, time
from pathlib import Path
import pytest, torch

EXE = shutil.which('kltn-qat', path=str(Path(sys.executable).parent)) or shutil.which('kltn-qat')
ENV = dict(os.environ, YOLO_OFFLINE='1', YOLO_AUTOINSTALL='false')

def _epochs(results_csv: Path) -> list[int]:
    if not results_csv.exists(): return []
    with open(results_csv) as f: return [int(float(r['epoch'].strip() if 'epoch' in r else r[' epoch'])) for r in csv.DictReader(f)]

@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    from kltn_qat.data import synth_dataset
    from kltn_qat.training import train_fp32
    d = tmp_path_factory.mktemp('resume')
    dy = synth_dataset(d / 'ds', train=16, valid=8, test=8, seed=0)
    best = train_fp32(dy, 'yolov8n.yaml', imgsz=64, epochs=1, batch=8, project=d / 'runs', name='fp32')
    cfg = d / 'cfg.yaml'
    cfg.write_text("qat: {epochs: 3, batch: 8, freeze_bn_epoch: 2, freeze_observer_epoch: 2}\ncalibration: {n_images: 8, batch: 4}\n")
    return d, dy, best, cfg

def _qat(d, dy, best, cfg, name, *extra):
    return [EXE, 'train-qat', '--data', str(dy), '--weights', str(best), '--config', str(cfg), '--imgsz', '64',
            '--project', str(d / 'runs'), '--name', name, *extra]

def test_kill_and_resume(setup):
    d, dy, best, cfg = setup
    # the uninterrupted run
    r = subprocess.run(_qat(d, dy, best, cfg, 'full'), env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    # the same run, killed hard once its first epoch is checkpointed
    run = d / 'runs' / 'killed'
    p = subprocess.Popen(_qat(d, dy, best, cfg, 'killed'), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while time.time() - t0 < 600 and p.poll() is None:
        if _epochs(run / 'results.csv') and (run / 'weights' / 'qat_last.pt').exists(): break
        time.sleep(0.2)
    assert p.poll() is None, "the run finished before it could be killed"
    p.send_signal(signal.SIGKILL); p.wait()
    done = _epochs(run / 'results.csv')
    assert 1 <= len(done) < 3, done
    # resume it
    r = subprocess.run(_qat(d, dy, best, cfg, 'killed', '--resume'), env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _epochs(run / 'results.csv') == [1, 2, 3]
    from kltn_qat.models.yolov8_qat import read_checkpoint
    a = read_checkpoint(d / 'runs' / 'full' / 'weights' / 'qat_last.pt')
    b = read_checkpoint(run / 'weights' / 'qat_last.pt')
    assert a['extra']['epoch'] == b['extra']['epoch'] == 2
    # same seed, same schedule, same random streams: the resumed run ends exactly where the uninterrupted one does
    diff = [k for k, v in a['state_dict'].items() if not torch.equal(v, b['state_dict'][k])]
    assert not diff, f"{len(diff)} tensors differ after resume, e.g. {diff[:3]}"
    # the drift history survives the kill: FP32 and PTQ (epoch 0), then every QAT epoch once
    stages = [l.split(',')[0] for l in (run / 'drift.csv').read_text().split()][1:]
    assert stages == ['fp32', 'ptq', 'qat_epoch_1', 'qat_epoch_2', 'qat_epoch_3'], stages
    assert (run / 'drift.csv').read_text() == (d / 'runs' / 'full' / 'drift.csv').read_text()
