"""QAT of a converged model trained elsewhere, with kltn_qat's defaults (issue 13's proof), in one run.

    python bench/converged.py                          # bench/models/quick_converged_yolov8n.pt, 3 seeds, full and 64-image train sets
    python bench/converged.py --seeds 0 --epochs 1     # a quicker look
    python bench/converged.py --results converged      # also copy the table to bench/results/converged.{json,md}

The model's own training settings decide the QAT recipe (`qat_recipe`: its image size, optimizer and final learning
rate); nothing here sets a learning rate. Rows, all scored on the test split that nothing was tuned on:
FP32 (.pt), PTQ (fake-quant .pt and its INT8 ONNX), and per seed and training-set size the QAT result (`qat_best.pt`,
the best of PTQ and the QAT epochs on the validation split, and its INT8 ONNX). Exit status 1 when a QAT row falls
below PTQ or more than 0.3 mAP50-95 points below FP32 (the never-worse guarantee), 0 otherwise.
"""
import argparse, json, os, shutil, statistics, sys, time
from pathlib import Path

os.environ.setdefault('YOLO_OFFLINE', '1'); os.environ.setdefault('YOLO_AUTOINSTALL', 'false'); os.environ.setdefault('YOLO_VERBOSE', 'false')
BENCH = Path(__file__).resolve().parent

def subset_yaml(data:Path, n:int, out:Path)->Path:
    "A copy of `data` whose train split lists only its first `n` training images."
    from kltn_qat.data import load_data_yaml, image_files
    import yaml
    imgs = image_files(data, 'train')[:n]
    out.mkdir(parents=True, exist_ok=True)
    (out / 'train.txt').write_text(''.join(f"{p.absolute()}\n" for p in imgs))
    d = load_data_yaml(data)
    y = {'train': str(out / 'train.txt'), 'val': [str(p) for p in d['val']], 'test': [str(p) for p in d['test']],
         'nc': d['nc'], 'names': d['names']}
    (out / 'data.yaml').write_text(yaml.safe_dump(y)); return out / 'data.yaml'

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', default=str(BENCH / 'models' / 'quick_converged_yolov8n.pt'))
    ap.add_argument('--data', default=None, help='data.yaml (default: the synthetic set the model was trained on, regenerated)')
    ap.add_argument('--out', default='runs/converged'); ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    ap.add_argument('--subsets', type=int, nargs='+', default=[0, 64], help='training images (0: the whole train split)')
    ap.add_argument('--epochs', type=int, default=2); ap.add_argument('--results', default=None)
    ap.add_argument('--valid', type=int, default=300, help='validation images (selection); the first 100 are the ones the FP32 run validated on')
    ap.add_argument('--test', type=int, default=500, help='test images (scoring): 100 test images leave about ±0.5 points of noise')
    ap.add_argument('--select-margin', type=float, default=None, help="qat.select_margin (default: the config's)")
    ap.add_argument('--table', default=None, metavar='JSON', help="only rebuild the table from a run's converged.json")
    a = ap.parse_args(argv)
    if a.table: return report(json.loads(Path(a.table).read_text()), a, Path(a.table).parent, 0)
    from kltn_qat.data import synth_dataset
    from kltn_qat.models.ptq import calibrate_checkpoint
    from kltn_qat.training import train_qat
    from kltn_qat.evaluation import evaluate
    from kltn_qat.deployment.export import export_onnx
    out = Path(a.out).absolute(); out.mkdir(parents=True, exist_ok=True)
    data = Path(a.data) if a.data else synth_dataset(out / 'data', train=400, valid=a.valid, test=a.test, seed=3, preset='quick', overwrite=True)
    score = lambda w, name: evaluate(w, data, 'test', batch=1 if str(w).endswith('.onnx') else 16, device='cpu', workdir=out / 'eval' / name)
    rows, t0 = {}, time.time()
    rows['fp32'] = score(a.model, 'fp32')
    ptq = calibrate_checkpoint(a.model, data, out / 'ptq.pt')
    rows['ptq'] = score(ptq, 'ptq'); rows['ptq_onnx_int8'] = score(export_onnx(ptq, out / 'ptq_int8.onnx'), 'ptq_onnx')
    qat = {'epochs': a.epochs, **({} if a.select_margin is None else {'select_margin': a.select_margin})}
    for n in a.subsets:
        d = subset_yaml(data, n, out / f'data_{n}') if n else data
        for s in a.seeds:
            k = f"qat_{n or 'all'}_seed{s}"
            r = train_qat(d, a.model, qat=qat, seed=s, project=out, name=k, exist_ok=True, ptq=ptq)
            rows[k] = {**score(r['qat'], k), 'selected': r['selected']}
            rows[k + '_onnx_int8'] = score(export_onnx(r['qat'], out / f'{k}_int8.onnx'), k + '_onnx')
    from kltn_qat.config import QATConfig
    margin = QATConfig(**qat).select_margin
    rows['_meta'] = {'model': Path(a.model).name, 'epochs': a.epochs, 'select_margin': margin, 'seconds': round(time.time() - t0), 'seeds': a.seeds, 'subsets': a.subsets}
    return report(rows, a, out, 1)

def val_gain(run:Path)->str:
    "Best QAT epoch minus PTQ, validation mAP50-95 points, from a QAT run's drift.csv ('' where there is none)."
    if not (run / 'drift.csv').exists(): return ''
    from kltn_qat.training import read_drift
    rows = read_drift(run / 'drift.csv')
    ptq = next(r['map50_95'] for r in rows if r['stage'] == 'ptq')
    return f"{100 * (max(r['map50_95'] for r in rows if r['stage'].startswith('qat_')) - ptq):+.2f}"

def report(rows:dict, a, out:Path, write_json:int)->int:
    "The table: each QAT row against PTQ of the same kind (fake-quant .pt or INT8 ONNX) and against FP32."
    meta = rows['_meta']
    fp = rows['fp32']['map50_95']
    lines = [f"Converged-model study: {meta['model']}, {meta['epochs']} QAT epochs with the defaults (qat.select_margin "
             f"{meta.get('select_margin', 0.0):g}), test split ({rows['fp32']['images']} images, {rows['fp32']['imgsz']} px); {meta['seconds']} s. `vs PTQ`: against the PTQ "
             "model of the same kind (fake-quant .pt, or INT8 ONNX).", '',
             '`best QAT on val`: the best QAT epoch against PTQ on the validation split (what selection saw; '
             '`qat.select_margin` decides whether it replaces PTQ).', '',
             '| model | mAP50 | mAP50-95 | vs PTQ (pts) | vs FP32 (pts) | kept | best QAT on val vs PTQ (pts) |',
             '|---|---|---|---|---|---|---|']
    bad = []
    for k, r in rows.items():
        if k == '_meta': continue
        pq = rows['ptq_onnx_int8' if k.endswith('_onnx_int8') else 'ptq']['map50_95']
        dp, df = 100 * (r['map50_95'] - pq), 100 * (r['map50_95'] - fp)
        lines.append(f"| {k} | {r['map50']:.3f} | {r['map50_95']:.3f} | {dp:+.2f} | {df:+.2f} | {r.get('selected', '')} | {val_gain(out / k)} |")
        if k.startswith('qat_') and (dp < -1e-9 or df < -0.3): bad.append(k)
    for n in meta['subsets']:
        for kind in ('', '_onnx_int8'):
            v = [rows[f"qat_{n or 'all'}_seed{s}{kind}"]['map50_95'] for s in meta['seeds']]
            lines.append(f"\nQAT{' INT8 ONNX' if kind else ''} ({n or 'all'} training images), mAP50-95 over seeds {meta['seeds']}: "
                         f"{statistics.mean(v):.4f}" + (f" ± {statistics.stdev(v):.4f}" if len(v) > 1 else ''))
    if bad: lines.append(f"\nBelow PTQ or more than 0.3 points below FP32: {', '.join(bad)}.")
    md = '\n'.join(lines); print(md)
    (out / 'converged.md').write_text(md + '\n')
    if write_json: (out / 'converged.json').write_text(json.dumps(rows, indent=1, default=str))
    if a.results:
        for ext in ('md', 'json'): shutil.copy(out / f'converged.{ext}', BENCH / 'results' / f'{a.results}.{ext}')
    if bad: print(f"below PTQ or FP32 - 0.3: {bad}", file=sys.stderr); return 1
    return 0

if __name__ == '__main__': sys.exit(main())
