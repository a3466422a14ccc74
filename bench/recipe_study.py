"""QAT recipe study on a converged YOLOv8n (issue 13): FP32, PTQ and QAT variants, each scored on the test split.

Every row, in the order the study ran them (`python bench/recipe_study.py plan` prints the same list):

    python bench/recipe_study.py base                      # FP32 + PTQ (minmax, moving_average) on the test split
    python bench/recipe_study.py val                       # FP32 + PTQ on the val split (beside the QAT val mAP)
    python bench/recipe_study.py qat b_default --lr 2e-4   # one QAT row; the other rows: PLAN below
    python bench/recipe_study.py table --results recipe_study   # tables → OUT/recipe_study.md, copied to bench/results/

Common options: `--out DIR` (default runs/recipe_study; `results.json` and `study.log` go there), `--model`
(default bench/models/quick_converged_yolov8n.pt). A row already in `OUT/results.json` is skipped, so the plan
can be re-run after an interruption. A quick look at one row: `qat try_c --lr 1e-5 --n-train 16 --epochs 1`
(about 2 min on 2 cores; the data set and the PTQ start are made first when missing).

Setup. Data: `synth_dataset(OUT/data, train=400, valid=100, test=100, seed=3, preset='quick')` (the set the model
was trained on). Every QAT row starts from the same PTQ checkpoint, `OUT/ptq_moving_average.pt`
(`calibrate_checkpoint`, the default qconfig = w8a8 with int16 stem weights, moving-average activation observers, the
first 64 train images, 256 px) and trains 2 epochs, batch 8, AdamW with the row's `--lr` (cosine to lr × 0.01,
warm-up 0.5 epoch), no mosaic, on the CPU. `--freeze-bn` / `--freeze-obs` default to 2, the library's defaults
when the study ran: with 2 epochs that means never frozen; 0 freezes BN statistics / observer ranges from the start.
Scored: `qat_last.pt` (the recipe itself, no selection) on the 100 test images; the "best" column is `qat_best.pt`,
which `train_qat` now chooses among PTQ and the QAT epochs on the validation split ("ptq" when PTQ was kept).

What the study found (bench/results/recipe_study.md; measured 2026-12-01 with this script's earlier version):
- FP32 0.737 mAP50-95, PTQ 0.732 on the test split: a converged 256 px model loses little to PTQ.
- The learning rate is the switch that matters. 2e-4 (the old default, 0.1 × the FP32 lr0) loses 1.6 points
  against PTQ over 3 seeds (0.717 ± 0.015); 1e-5 (≈ the FP32 run's final rate lr0 × lrf) gains +0.2 (0.734 ± 0.004),
  +0.3 with BN and observers frozen from epoch 0 (0.735 ± 0.006); 3e-6 learns nothing (the lr≈0 control's level).
- Freezing BN statistics and observer ranges from epoch 0: no measurable harm or gain; distillation: no gain.
- 64 training images: lr 1e-5 stays within −0.3…+0.2 of PTQ; 2e-4 loses 2.3 points.
- Seed-to-seed std is 0.2–0.6 points, and the 100-image val and test splits disagree by more than the QAT effect.
These are what `qat_recipe` now defaults to: lr = the FP32 run's final rate, freezes at epoch 0, no distillation.
"""
import argparse, json, os, platform, shutil, statistics, subprocess, sys, time
from pathlib import Path

os.environ.setdefault('YOLO_OFFLINE', '1'); os.environ.setdefault('YOLO_AUTOINSTALL', 'false'); os.environ.setdefault('YOLO_VERBOSE', 'false')
BENCH = Path(__file__).resolve().parent
MODEL = BENCH / 'models' / 'quick_converged_yolov8n.pt'
IMGSZ, EPOCHS, BATCH = 256, 2, 8

# the rows run, in the order run (f, g, h, i use the best of c/d/e: filled in after c/d/e were scored)
PLAN = """
python bench/recipe_study.py base
python bench/recipe_study.py qat b_default          --lr 2e-4                            # the old defaults (0.002 x 0.1)
python bench/recipe_study.py qat c_lr1e-5           --lr 1e-5
python bench/recipe_study.py qat d_lr1e-5_bn0       --lr 1e-5 --freeze-bn 0
python bench/recipe_study.py qat e_lr1e-5_obs0      --lr 1e-5 --freeze-obs 0
python bench/recipe_study.py qat de_lr1e-5_bn0_obs0 --lr 1e-5 --freeze-bn 0 --freeze-obs 0
python bench/recipe_study.py qat z_lr0_control      --lr 1e-9                            # no learning: only BN stats + observers move
python bench/recipe_study.py qat h_e_64img          --lr 1e-5 --freeze-obs 0 --n-train 64
python bench/recipe_study.py qat h_de_64img         --lr 1e-5 --freeze-bn 0 --freeze-obs 0 --n-train 64
python bench/recipe_study.py qat h_b_64img          --lr 2e-4 --n-train 64
python bench/recipe_study.py qat h_c_64img          --lr 1e-5 --n-train 64
python bench/recipe_study.py qat g_e_lr3e-6         --lr 3e-6 --freeze-obs 0
python bench/recipe_study.py qat g_e_lr3e-5         --lr 3e-5 --freeze-obs 0
python bench/recipe_study.py qat f_e_distill        --lr 1e-5 --freeze-obs 0 --distill 1.0
python bench/recipe_study.py qat i_e_seed1          --lr 1e-5 --freeze-obs 0 --seed 1
python bench/recipe_study.py qat i_e_seed2          --lr 1e-5 --freeze-obs 0 --seed 2
python bench/recipe_study.py qat i_b_seed1          --lr 2e-4 --seed 1
python bench/recipe_study.py qat i_b_seed2          --lr 2e-4 --seed 2
python bench/recipe_study.py qat i_de_seed1         --lr 1e-5 --freeze-bn 0 --freeze-obs 0 --seed 1
python bench/recipe_study.py qat i_de_seed2         --lr 1e-5 --freeze-bn 0 --freeze-obs 0 --seed 2
python bench/recipe_study.py qat i_e_lr3e-6_seed1   --lr 3e-6 --freeze-obs 0 --seed 1
python bench/recipe_study.py qat i_e_lr3e-6_seed2   --lr 3e-6 --freeze-obs 0 --seed 2
python bench/recipe_study.py val                                                         # FP32 / PTQ on the val split
python bench/recipe_study.py table --results recipe_study
"""
# (The earlier version also scored b_default and c_lr1e-5 with observers switched on, an artefact of the code of
#  that time: `evaluate` no longer lets observers move, so those rows have no counterpart here.)

SEED_GROUPS = {'today (lr 2e-4)': ['b_default', 'i_b_seed1', 'i_b_seed2'],
               'lr 1e-5, obs frozen from 0': ['e_lr1e-5_obs0', 'i_e_seed1', 'i_e_seed2'],
               'lr 1e-5, BN + obs frozen from 0': ['de_lr1e-5_bn0_obs0', 'i_de_seed1', 'i_de_seed2'],
               'lr 3e-6, obs frozen from 0': ['g_e_lr3e-6', 'i_e_lr3e-6_seed1', 'i_e_lr3e-6_seed2']}

class Study:
    "One study folder: its data, PTQ start, results.json and log."
    def __init__(self, out:str|Path, model:str|Path=MODEL):
        self.out, self.model = Path(out).absolute(), Path(model).absolute()
        self.out.mkdir(parents=True, exist_ok=True)
        self.results = self.out / 'results.json'

    def log(self, *a):
        msg = time.strftime('%H:%M:%S ') + ' '.join(str(x) for x in a)
        print(msg, flush=True)
        with open(self.out / 'study.log', 'a') as f: f.write(msg + '\n')

    def load(self)->dict:
        r = json.loads(self.results.read_text()) if self.results.exists() else {}
        if 'setup' not in r: r['setup'] = setup(self)
        r.setdefault('runs', {})
        return r

    def save(self, res:dict):
        tmp = self.results.with_suffix('.tmp'); tmp.write_text(json.dumps(res, indent=1, default=str)); os.replace(tmp, self.results)

    def save_row(self, name:str, row:dict):
        res = self.load(); res['runs'][name] = row; self.save(res)
        self.log('RESULT', name, json.dumps({k: v for k, v in row.items() if k not in ('best', 'last', 'per_class_ap50_95')}, default=str))

    @property
    def data(self)->Path:
        "The synthetic set the model was trained on, made once in OUT/data (regenerated when it differs)."
        from kltn_qat.data import synth_dataset
        import yaml
        y = self.out / 'data' / 'data.yaml'
        want = dict(seed=3, train=400, valid=100, test=100)
        if y.exists():
            s = (yaml.safe_load(y.read_text()) or {}).get('synth') or {}
            if all(s.get(k) == v for k, v in want.items()): return y
        self.log('writing the synthetic data set', y.parent)
        return synth_dataset(self.out / 'data', **want, preset='quick', overwrite=True)

    def ptq(self, method:str='moving_average')->Path:
        "The PTQ checkpoint (64 train images, default qconfig); `moving_average` is every QAT row's start."
        from kltn_qat.models.ptq import calibrate_checkpoint
        p = self.out / f'ptq_{method}.pt'
        if not p.exists():
            t = time.time()
            calibrate_checkpoint(self.model, self.data, p, n_images=64, imgsz=IMGSZ, method=method, batch=8, device='cpu')
            (self.out / f'ptq_{method}.calib_s').write_text(f"{time.time() - t:.1f}")
        return p

    def score(self, weights, split:str='test')->dict:
        "mAP of an Ultralytics .pt or a kltn_qat checkpoint on `split` (observers never move in `evaluate`)."
        from kltn_qat.evaluation import evaluate, model_kind
        from kltn_qat.models.yolov8_qat import read_checkpoint
        t = time.time()
        m = evaluate(weights, self.data, split=split, imgsz=IMGSZ, batch=16, device='cpu', workdir=self.out / 'eval_tmp')
        if model_kind(weights) == 'kltn_qat':
            ex = read_checkpoint(weights).get('extra') or {}
            m['ckpt_epoch'], m['ckpt_val'], m['ckpt_selected'] = ex.get('epoch'), ex.get('metrics'), ex.get('selected')
        m['eval_s'] = round(time.time() - t, 1)
        return m

def setup(st:Study)->dict:
    "What a reader needs to know about where and how the rows were measured."
    def git(*a):
        try: return subprocess.run(['git', *a], cwd=BENCH, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception: return ''
    cpu = next((l.split(':', 1)[1].strip() for l in Path('/proc/cpuinfo').read_text().splitlines() if l.startswith('model name')), platform.processor()) \
        if Path('/proc/cpuinfo').exists() else platform.processor()
    flags = Path('/proc/cpuinfo').read_text() if Path('/proc/cpuinfo').exists() else ''
    import torch
    return {'code': f"kltn_qat at {git('rev-parse', '--short', 'HEAD')}{' (uncommitted changes)' if git('status', '--porcelain', '--', 'kltn_qat') else ''}",
            'script': 'bench/recipe_study.py', 'model': str(st.model), 'date': time.strftime('%Y-%m-%d'),
            'data': "synth_dataset(train=400, valid=100, test=100, seed=3, preset='quick')", 'imgsz': IMGSZ,
            'qat': 'batch 8, AdamW, cosine (lrf 0.01), warm-up 0.5 epoch, mosaic 0, workers 0, CPU',
            'ptq_start': 'calibrate_checkpoint(n_images=64, method=moving_average), default qconfig (w8a8, int16 stem weights)',
            'scoring': 'test split with kltn_qat.evaluation.evaluate; "last" = qat_last.pt (the row), "best" = qat_best.pt '
                       '(best of PTQ and QAT epochs on val; ckpt_epoch -1 = PTQ, 0 = after the first epoch)',
            'machine': f"{cpu}, {os.cpu_count()} cores{', AVX-512 VNNI' if 'avx512_vnni' in flags else ''}; torch {torch.__version__}, "
                       f"{torch.get_num_threads()} threads"}

def base(st:Study):
    "FP32 and PTQ (default qconfig, 64 train images, minmax vs moving_average) on the test split."
    runs = st.load()['runs']
    if 'a_fp32' not in runs: st.save_row('a_fp32', st.score(st.model))
    for method in ('minmax', 'moving_average'):
        name = f'a_ptq_{method}'
        if name in runs: continue
        p = st.ptq(method)
        cs = st.out / f'ptq_{method}.calib_s'
        st.save_row(name, {**st.score(p), 'calib_s': float(cs.read_text()) if cs.exists() else None, 'ckpt': str(p)})

def val_reference(st:Study):
    "FP32 and PTQ on the validation split, to set beside the QAT runs' in-training val mAP."
    res = st.load()
    res['val_reference'] = {'fp32_val': st.score(st.model, 'val'),
                            **{f'ptq_{m}_val': st.score(st.ptq(m), 'val') for m in ('minmax', 'moving_average')}}
    st.save(res)
    st.log('VAL', {k: (round(v['map50'], 4), round(v['map50_95'], 4)) for k, v in res['val_reference'].items()})

def subset_yaml(st:Study, n:int)->Path:
    "A data.yaml whose train split lists only the first `n` (sorted) training images."
    from kltn_qat.data import load_data_yaml, image_files
    import yaml
    data, out = st.data, st.out / f'data_train{n}'
    out.mkdir(parents=True, exist_ok=True)
    (out / 'train.txt').write_text(''.join(f"{p.absolute()}\n" for p in image_files(data, 'train')[:n]))
    d = load_data_yaml(data)
    y = {'train': str(out / 'train.txt'), 'val': [str(p) for p in d['val']], 'test': [str(p) for p in d['test']],
         'nc': d['nc'], 'names': d['names']}
    (out / 'data.yaml').write_text(yaml.safe_dump(y)); return out / 'data.yaml'

def qat(st:Study, name:str, lr:float, freeze_bn:int|None=2, freeze_obs:int|None=2, distill:float=0.0,
        distill_kind:str='logit', n_train:int|None=None, seed:int=0, epochs:int=EPOCHS):
    "One QAT run from the common PTQ start; its last (and best) checkpoint scored on the test split."
    from kltn_qat.training import train_qat, read_drift, qat_recipe, fp32_train_args
    import pandas as pd
    qcfg = dict(epochs=epochs, batch=BATCH, workers=0, optimizer='AdamW', lr=lr, freeze_bn_epoch=freeze_bn,
                freeze_observer_epoch=freeze_obs, distill_weight=distill, distill_kind=distill_kind)
    ptq = st.ptq('moving_average')
    data = subset_yaml(st, n_train) if n_train else st.data
    st.log('START', name, json.dumps(qcfg), 'data', data, 'seed', seed)
    t = time.time()
    r = train_qat(data, st.model, qat=qcfg, imgsz=IMGSZ, device='cpu', seed=seed, project=st.out / 'runs', name=name,
                  exist_ok=True, ptq=ptq, log=st.log)
    train_s = round(time.time() - t, 1)
    df = pd.read_csv(r['results_csv']); df.columns = [c.strip() for c in df.columns]
    tm = df['time'] if 'time' in df else [float('nan')] * len(df)
    val = [{'epoch': int(e), 'val_map50': float(a), 'val_map50_95': float(b), 'time': float(x) if x == x else None}
           for e, a, b, x in zip(df['epoch'], df['metrics/mAP50(B)'], df['metrics/mAP50-95(B)'], tm)]
    eff = {k: v for k, (v, _) in qat_recipe(qcfg, fp32_train_args(st.model), IMGSZ).items()}   # what train_qat ran with
    row = {'recipe': {**qcfg, 'n_train': n_train or 400, 'seed': seed, 'momentum': eff['momentum']}, 'effective_recipe': eff,
           'train_s': train_s, 'val_history': val,
           'drift': read_drift(r['drift_csv']) if r.get('drift_csv') else None, 'selected': r.get('selected')}
    row['best'] = st.score(r['qat'])
    row['last'] = st.score(r['qat_last'])
    row['map50'], row['map50_95'] = row['last']['map50'], row['last']['map50_95']
    st.save_row(name, row)

def _best_col(b:dict)->str:
    e = b.get('ckpt_epoch')
    return f"{b['map50_95']:.3f} ({'ptq' if e == -1 or b.get('ckpt_selected') == 'ptq' else e})"

def tables(res:dict)->str:
    "The study's Markdown tables: references, every run, seed groups."
    runs, L = res['runs'], []
    nan = float('nan')
    fp = runs.get('a_fp32', {}).get('map50_95', nan); pt = runs.get('a_ptq_moving_average', {}).get('map50_95', nan)
    vr = res.get('val_reference') or {}
    if vr:
        L += ['| model | test mAP50 | test mAP50-95 | val mAP50-95 |', '|---|---|---|---|']
        for k, v in (('FP32', 'a_fp32'), ('PTQ minmax', 'a_ptq_minmax'), ('PTQ moving_average (the QAT start)', 'a_ptq_moving_average')):
            t = runs.get(v); vv = vr.get(v[2:] + '_val')
            if t and vv: L.append(f"| {k} | {t['map50']:.3f} | {t['map50_95']:.4f} | {vv['map50_95']:.4f} |")
        L.append('')
    L += ['| run | lr | BN freeze | obs freeze | distill | train imgs | seed | test mAP50 (last) | test mAP50-95 (last) | Δ vs PTQ | Δ vs FP32 | best-ckpt mAP50-95 (epoch) | val mAP50-95 per epoch | train s |',
          '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for k, v in runs.items():
        if 'recipe' not in v:
            L.append(f"| {k} | | | | | | | {v['map50']:.3f} | {v['map50_95']:.3f} | {100*(v['map50_95']-pt):+.1f} | {100*(v['map50_95']-fp):+.1f} | | | {v.get('calib_s') or ''} |")
            continue
        rc = v['recipe']
        vh = ' / '.join(f"{h['val_map50_95']:.3f}" for h in v['val_history'])
        L.append(f"| {k} | {rc['lr']:g} | {rc['freeze_bn_epoch']} | {rc['freeze_observer_epoch']} | {rc['distill_weight']:g} | {rc['n_train']} | {rc['seed']} | "
                 f"{v['map50']:.3f} | {v['map50_95']:.3f} | {100*(v['map50_95']-pt):+.1f} | {100*(v['map50_95']-fp):+.1f} | "
                 f"{_best_col(v['best'])} | {vh} | {v['train_s']:.0f} |")
    sg = seed_groups(runs)
    if sg:
        L += ['', '| recipe | seeds | test mAP50-95 (last) mean ± std | Δ vs PTQ | Δ vs FP32 | min | per seed |', '|---|---|---|---|---|---|---|']
        for g, s in sg.items():
            xs, m = s['map50_95'], s['mean']
            L.append(f"| {g} | {len(xs)} | {m:.4f} ± {s['std']:.4f} | {100*(m-pt):+.2f} | {100*(m-fp):+.2f} | {min(xs):.4f} | {' / '.join(f'{x:.4f}' for x in xs)} |")
    return '\n'.join(L)

def seed_groups(runs:dict)->dict:
    "Mean ± sample std of the last-epoch test mAP50-95 of each recipe run with several seeds."
    out = {}
    for g, names in SEED_GROUPS.items():
        have = [n for n in names if n in runs]
        if len(have) < 2: continue
        xs = [runs[n]['map50_95'] for n in have]
        out[g] = {'runs': have, 'map50_95': xs, 'mean': statistics.mean(xs), 'std': statistics.stdev(xs),
                  'map50': [runs[n]['map50'] for n in have]}
    return out

def table(st:Study, results:str|None=None):
    res = st.load(); res['seed_groups'] = seed_groups(res['runs']); st.save(res)
    md = tables(res); print(md)
    (st.out / 'recipe_study.md').write_text(f"# QAT recipe study ({res['setup'].get('date')}, {res['setup'].get('machine')})\n\n"
                                            f"Made by `python bench/recipe_study.py` (see its `plan`); setup: `results.json`.\n\n{md}\n")
    if results:
        shutil.copy(st.results, BENCH / 'results' / f'{results}.json')
        shutil.copy(st.out / 'recipe_study.md', BENCH / 'results' / f'{results}.md')
        print(f"copied to bench/results/{results}.json and .md")

def main(argv=None):
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument('--out', default='runs/recipe_study', help='study folder: data, checkpoints, results.json, study.log')
    common.add_argument('--model', default=str(MODEL), help='the converged FP32 model')
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='cmd', required=True)
    sub.add_parser('base', parents=[common], help='FP32 and PTQ rows on the test split')
    sub.add_parser('val', parents=[common], help='FP32 and PTQ on the val split')
    sub.add_parser('plan', parents=[common], help='print every command of the study')
    t = sub.add_parser('table', parents=[common], help='Markdown tables of results.json → OUT/recipe_study.md')
    t.add_argument('--results', default=None, help='also copy results.json and the tables to bench/results/NAME.{json,md}')
    q = sub.add_parser('qat', parents=[common], help='one QAT row from the PTQ start')
    q.add_argument('name'); q.add_argument('--lr', type=float, required=True)
    none_or_int = lambda s: None if s.lower() == 'none' else int(s)
    q.add_argument('--freeze-bn', type=none_or_int, default=2, help='freeze_bn_epoch (2: never within 2 epochs; none: never)')
    q.add_argument('--freeze-obs', type=none_or_int, default=2, help='freeze_observer_epoch (2: never within 2 epochs; none: never)')
    q.add_argument('--distill', type=float, default=0.0); q.add_argument('--distill-kind', default='logit')
    q.add_argument('--n-train', type=int, default=None, help='train on the first N training images only')
    q.add_argument('--seed', type=int, default=0)
    q.add_argument('--epochs', type=int, default=EPOCHS, help='QAT epochs (the study: 2; 1 with --n-train 16 for a quick look)')
    a = p.parse_args(argv)
    if a.cmd == 'plan': print(PLAN); return 0
    st = Study(a.out, a.model)
    if a.cmd == 'base': base(st)
    elif a.cmd == 'val': val_reference(st)
    elif a.cmd == 'table': table(st, a.results)
    else:
        if a.name in st.load()['runs']: st.log('SKIP (done)', a.name); return 0
        qat(st, a.name, a.lr, a.freeze_bn, a.freeze_obs, a.distill, a.distill_kind, a.n_train, a.seed, a.epochs)
    return 0

if __name__ == '__main__': sys.exit(main())
