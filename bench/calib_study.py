"""Which activation calibration should PTQ (and so the start of QAT) use? Measured on a converged model, in one run.

    python bench/calib_study.py                        # bench/models/quick_converged_yolov8n.pt, every observer, 64 and 256 images
    python bench/calib_study.py --results calib_study  # also copy the table to bench/results/calib_study.{json,md}
    python bench/calib_study.py --valid 100 --test 100 --methods minmax moving_average histogram mse percentile entropy \
        --results calib_study_100                      # the same on the 100-image splits the model was validated on

The data: the synthetic set the model was trained on (seed 3, 400 training images), with 300 validation and 500 test
images (the first 100 of each are the model's own validation and test images).
A default is chosen on the validation split only; the test split is scored for the record and never used to choose.
Every row is `calibrate_checkpoint` with the default policy (w8a8, 16-bit stem weights), only the activation observer
used while calibrating and the number of calibration images change.
"""
import argparse, json, os, time
from pathlib import Path

os.environ.setdefault('YOLO_OFFLINE', '1'); os.environ.setdefault('YOLO_AUTOINSTALL', 'false'); os.environ.setdefault('YOLO_VERBOSE', 'false')
BENCH = Path(__file__).resolve().parent
METHODS = ['minmax', 'moving_average', 'histogram', 'percentile']   # 'mse' is the histogram observer's default method

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', default=str(BENCH / 'models' / 'quick_converged_yolov8n.pt'))
    ap.add_argument('--data', default=None, help='data.yaml (default: the synthetic set the model was trained on, regenerated)')
    ap.add_argument('--out', default='runs/calib_study'); ap.add_argument('--methods', nargs='+', default=METHODS)
    ap.add_argument('--images', type=int, nargs='+', default=[64, 256]); ap.add_argument('--results', default=None)
    ap.add_argument('--valid', type=int, default=300); ap.add_argument('--test', type=int, default=500)
    a = ap.parse_args(argv)
    from kltn_qat.data import synth_dataset
    from kltn_qat.models.ptq import calibrate_checkpoint
    from kltn_qat.evaluation import evaluate
    out = Path(a.out).absolute(); out.mkdir(parents=True, exist_ok=True)
    data = Path(a.data) if a.data else synth_dataset(out / 'data', train=400, valid=a.valid, test=a.test, seed=3, preset='quick', overwrite=True)
    score = lambda w, name, split: evaluate(w, data, split, batch=16, device='cpu', workdir=out / 'eval' / f'{name}_{split}')
    rows = {'fp32': {s: score(a.model, 'fp32', s)['map50_95'] for s in ('val', 'test')}}
    for n in a.images:
        for m in a.methods:
            k = f'{m}_{n}'; t0 = time.time()
            ck = calibrate_checkpoint(a.model, data, out / f'{k}.pt', n_images=n, method=m, log=lambda *_: None)
            rows[k] = {'calib_s': round(time.time() - t0, 1), **{s: score(ck, k, s)['map50_95'] for s in ('val', 'test')}}
            print(k, rows[k], flush=True)
    rows['_meta'] = {'model': Path(a.model).name, 'images': a.images, 'methods': a.methods}
    fp = rows['fp32']
    lines = [f"PTQ calibration study: {rows['_meta']['model']}, default policy; mAP50-95 on val (chooses) and test (records), "
             "Δ in points vs FP32.", '', '| calibration | images | val | Δ val | test | Δ test | calibrate s |', '|---|---|---|---|---|---|---|',
             f"| FP32 | | {fp['val']:.4f} | | {fp['test']:.4f} | | |"]
    for k, r in rows.items():
        if k in ('fp32', '_meta'): continue
        m, n = k.rsplit('_', 1)
        lines.append(f"| {m} | {n} | {r['val']:.4f} | {100*(r['val']-fp['val']):+.2f} | {r['test']:.4f} | {100*(r['test']-fp['test']):+.2f} | {r['calib_s']} |")
    best = max((k for k in rows if k not in ('fp32', '_meta')), key=lambda k: rows[k]['val'])
    lines += ['', f"Best on val: {best} (val {rows[best]['val']:.4f}, test {rows[best]['test']:.4f})."]
    md = '\n'.join(lines) + '\n'; print(md)
    (out / 'calib_study.json').write_text(json.dumps(rows, indent=1)); (out / 'calib_study.md').write_text(md)
    if a.results:
        (BENCH / 'results' / f'{a.results}.json').write_text(json.dumps(rows, indent=1)); (BENCH / 'results' / f'{a.results}.md').write_text(md)
    return 0

if __name__ == '__main__': raise SystemExit(main())
