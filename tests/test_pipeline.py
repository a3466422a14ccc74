"`kltn-qat pipeline` end to end on a dataset the project did not generate (Roboflow layout, 3 classes), tiny sizes."
import json, os, shutil, subprocess, sys
from pathlib import Path
import yaml

EXE = shutil.which('kltn-qat', path=str(Path(sys.executable).parent)) or shutil.which('kltn-qat')
ENV = dict(os.environ, YOLO_OFFLINE='1', YOLO_AUTOINSTALL='false', MPLBACKEND='Agg')
ROOT = Path(__file__).resolve().parents[1]

def roboflow_copy(src: Path, dst: Path) -> Path:
    "The synthetic set rewritten as a Roboflow export: `../train/images` paths, `valid/`, names as a dict, 3 classes."
    keep = {0: 0, 3: 1, 6: 2}   # no_entry, max_speed, mandatory -> 0, 1, 2; the other classes become background
    for split in ('train', 'valid', 'test'):
        (dst / split / 'images').mkdir(parents=True); (dst / split / 'labels').mkdir(parents=True)
        for im in (src / split / 'images').iterdir():
            shutil.copy(im, dst / split / 'images' / im.name)
            lines = (src / split / 'labels' / (im.stem + '.txt')).read_text().split('\n')
            out = [' '.join([str(keep[int(l.split()[0])])] + l.split()[1:]) for l in lines if l.strip() and int(l.split()[0]) in keep]
            (dst / split / 'labels' / (im.stem + '.txt')).write_text('\n'.join(out))
    y = dst / 'data.yaml'
    y.write_text(yaml.safe_dump({'train': '../train/images', 'val': '../valid/images', 'test': '../test/images',
                                 'nc': 3, 'names': {0: 'no_entry', 1: 'max_speed', 2: 'mandatory'}}))
    return y

def test_pipeline_on_foreign_dataset(tmp_path):
    from kltn_qat.data import synth_dataset
    src = synth_dataset(tmp_path / 'synth', train=24, valid=8, test=8, seed=3).parent
    data = roboflow_copy(src, tmp_path / 'roboflow')
    cfg = tmp_path / 'tiny.yaml'
    cfg.write_text(f"extends: {ROOT / 'configs' / 'quick.yaml'}\nname: tiny\nmodel: {{imgsz: 128}}\n"
                   "fp32: {epochs: 1, batch: 8, nbs: 8}\nqat: {epochs: 1, batch: 8}\ncalibration: {n_images: 8, batch: 4}\n"
                   "benchmark: {runs: 3, warmup: 1}\n")
    out = tmp_path / 'run'
    r = subprocess.run([EXE, 'pipeline', '--data', str(data), '--config', str(cfg), '--out', str(out)],
                       env=ENV, capture_output=True, text=True, timeout=1500, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
    m = json.loads((out / 'metrics.json').read_text())
    for k in ('fp32', 'ptq', 'qat', 'fp32_onnx', 'qat_onnx_int8'):
        assert set(m['models'][k]) >= {'map50', 'map50_95', 'latency_ms', 'size_mb'}, k
        assert 0 <= m['models'][k]['map50_95'] <= m['models'][k]['map50'] <= 1
    assert m['models']['qat_onnx_int8']['latency_ms'] > 0
    assert m['models']['qat_onnx_int8']['size_mb'] < 0.35 * m['models']['fp32_onnx']['size_mb']
    assert (out / 'report.md').exists() and '| qat_onnx_int8 |' in (out / 'report.md').read_text()
    # a second run finds every stage done
    r = subprocess.run([EXE, 'pipeline', '--data', str(data), '--config', str(cfg), '--out', str(out)],
                       env=ENV, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.count('up to date, skipped') >= 6, r.stdout[-2000:]
