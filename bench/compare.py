"""Side-by-side comparison of kltn_qat against the alternatives, in one run.

Rows (same dataset, same FP32 checkpoint, same image size, same fine-tuning epochs):
  FP32 PyTorch (.pt) and FP32 ONNX;
  onnxruntime `quantize_static` PTQ of the FP32 ONNX, whole graph and with the Detect post-processing float;
  kltn_qat PTQ (calibration only, INT8 QDQ ONNX);
  kltn_qat QAT (INT8 QDQ ONNX), one run per seed;
  Ultralytics' own QAT (`quantize=8`, NVIDIA ModelOpt) per seed, only where a Python with ModelOpt is given.

Columns: mAP50, mAP50-95, change of mAP50-95 against FP32 (points), onnxruntime CPU latency (batch 1, all models
interleaved in ONE benchmark call) and its ratio to the FP32 ONNX, ONNX size, fine-tuning wall time, and the QAT
seconds per epoch as a multiple of an FP32 fine-tuning epoch run in the same process with the same settings.

    python bench/compare.py --config configs/quick.yaml --out runs/bench_quick \
        --fp32 runs/quick/fp32/weights/best.pt --data runs/quick/data/data.yaml
    python bench/compare.py --config configs/base.yaml --out runs/bench_converged --results converged_compare \
        --fp32 bench/models/quick_converged_yolov8n.pt --data DATA/data.yaml   # a converged model trained elsewhere:
        # the QAT recipe comes from its own train_args (base.yaml pins none); DATA from
        # `kltn-qat data synth --preset quick --out DATA --train 400 --valid 300 --test 500 --seed 3`
    python bench/compare.py --smoke      # tiny end-to-end run (minutes); exit status 1 on failure

Writes OUT/compare.json, OUT/compare.md, OUT/compare.png; `--results NAME` also copies them to bench/results/NAME.*.
"""
import argparse, copy, csv, json, math, os, platform, shlex, shutil, subprocess, sys, time, traceback
from pathlib import Path

os.environ.setdefault('YOLO_OFFLINE', '1'); os.environ.setdefault('YOLO_AUTOINSTALL', 'false')

import numpy as np

from kltn_qat.config import load_config, config_to_dict
from kltn_qat.core import KltnError, set_seed
from kltn_qat.pipeline import Stages

BENCH = Path(__file__).resolve().parent
SMOKE = {'data': {'train': 16, 'valid': 8, 'test': 8}, 'model': {'imgsz': 128},
         'fp32': {'epochs': 1, 'batch': 8}, 'qat': {'epochs': 1, 'batch': 8, 'freeze_bn_epoch': 0, 'freeze_observer_epoch': 0},
         'calibration': {'n_images': 8, 'batch': 8}, 'benchmark': {'runs': 5, 'warmup': 1}}

# the table's rows, in order: key -> label
ROWS = {'fp32_pt': 'FP32 (PyTorch .pt)', 'fp32_onnx': 'FP32 (ONNX)', 'fp32_control': 'FP32 + 1 FP32 fine-tuning epoch (control, .pt)',
        'ort_ptq_whole': 'onnxruntime PTQ, whole graph', 'ort_ptq_headfloat': 'onnxruntime PTQ, head post-proc. float',
        'kltn_ptq': 'kltn_qat PTQ (INT8 ONNX)', 'kltn_qat': 'kltn_qat QAT (INT8 ONNX)',
        'ultralytics_qat': 'Ultralytics QAT (ModelOpt, INT8 ONNX)'}


def machine()->dict:
    "CPU model, cores, load average, library versions."
    from kltn_qat.deployment.benchmark import machine_info
    import torch, ultralytics
    m = machine_info()
    m.update(platform=platform.platform(), torch=torch.__version__, ultralytics=ultralytics.__version__,
             gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, time=time.strftime('%Y-%m-%d %H:%M:%S %z'))
    return m


def epoch_seconds(results_csv)->float|None:
    "Seconds per epoch of an Ultralytics run: its results.csv's cumulative `time` over the epochs (validation included)."
    p = Path(results_csv)
    if not p.exists(): return None
    with open(p) as f: rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(f)]
    if not rows or 'time' not in rows[-1]: return None
    return float(rows[-1]['time']) / len(rows)


def int8_inits(path)->int:
    "How many weight initializers an ONNX stores as 8-bit integers (0: float weights with Q/DQ applied at run time)."
    import onnx
    m = onnx.load(str(path), load_external_data=False)
    return sum(i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) and len(i.dims) > 1 for i in m.graph.initializer)


# --- Ultralytics' own QAT, in a Python that has nvidia-modelopt (never kltn_qat's venv) -----------------------------
_ULTRA_QAT = r'''
import json, os, sys, time
os.environ.setdefault('YOLO_OFFLINE', '1'); os.environ.setdefault('YOLO_AUTOINSTALL', 'false')
a = json.loads(sys.argv[1])
from ultralytics import YOLO
t = time.time()
m = YOLO(a['fp32'])
m.train(**a['train'])
best = str(m.trainer.best); secs = time.time() - t
onnx = YOLO(best).export(format='onnx', imgsz=a['train']['imgsz'], opset=a['opset'], batch=1, dynamic=False, simplify=True)
out = a['onnx']; os.replace(onnx, out)
print('ULTRA_QAT_RESULT ' + json.dumps({'best': best, 'onnx': out, 'seconds': secs, 'results_csv': str(m.trainer.save_dir / 'results.csv')}))
'''

def modelopt_status(python:str|None)->tuple[bool,str]:
    "Can `python` run Ultralytics' `quantize=8` (ultralytics + nvidia-modelopt importable)?"
    if not python: return False, ("no --ultralytics-python given: Ultralytics' QAT needs nvidia-modelopt, which is not a "
                                  "kltn_qat dependency; install it in a separate venv and pass its python")
    r = subprocess.run([python, '-c', 'import modelopt, modelopt.torch.quantization, ultralytics; print(modelopt.__version__)'],
                       capture_output=True, text=True, timeout=300)
    if r.returncode: return False, f"{python} cannot import modelopt/ultralytics: {(r.stderr.strip().splitlines() or ['?'])[-1]}"
    return True, f"nvidia-modelopt {r.stdout.strip()} in {python}"


def ultralytics_qat(python:str, fp32:str, data:str, cfg, seed:int, out:Path, device:str, recipe:dict)->dict:
    "Fine-tune `fp32` with Ultralytics' `quantize=8` for the same epochs / batch / LR as kltn_qat QAT, export its INT8 ONNX."
    from kltn_qat.training import qat_train_args   # the very trainer arguments kltn_qat's QAT uses (epochs, batch, LR schedule, momentum)
    q = cfg.qat
    train = dict(data=data, quantize=8, **qat_train_args(recipe),
                 workers=q.workers, device=device or 'cpu', seed=seed, deterministic=True, project=str(out), name=f'ultra_qat_s{seed}',
                 exist_ok=True, plots=False, amp=False, verbose=False)
    a = {'fp32': fp32, 'train': train, 'opset': cfg.export.opset, 'onnx': str(out / 'onnx' / f'ultra_qat_s{seed}.onnx')}
    r = subprocess.run([python, '-c', _ULTRA_QAT, json.dumps(a)], capture_output=True, text=True, timeout=3 * 3600)
    line = next((l for l in r.stdout.splitlines() if l.startswith('ULTRA_QAT_RESULT ')), None)
    if r.returncode or line is None:
        err = [l for l in (r.stderr + r.stdout).strip().splitlines() if l.strip()]
        (out / f'ultra_qat_s{seed}.log').write_text(r.stdout + '\n' + r.stderr)
        raise KltnError(f"Ultralytics quantize=8 failed (exit {r.returncode}): {err[-1] if err else '?'} "
                        f"(log: {out / f'ultra_qat_s{seed}.log'})")
    return json.loads(line.split(' ', 1)[1])


# --- the comparison ------------------------------------------------------------------------------------------------------
def compare(cfg, out:Path, seeds:list[int], fp32:str|None=None, data:str|None=None, ultra_python:str|None=None,
            fp32_control:bool=True, force:bool=False, ultra_seeds:list[int]|None=None, log=print)->dict:
    "Run every row and return the results dict (also written as OUT/compare.json)."
    out = Path(out).absolute(); out.mkdir(parents=True, exist_ok=True); (out / 'onnx').mkdir(exist_ok=True)
    t_start = time.time()
    mach = {'start': machine()}
    st = Stages(out, force, log)
    c = config_to_dict(cfg)
    imgsz, opset = cfg.model.imgsz, cfg.export.opset
    notes, errors = [], {}

    # data: a given data.yaml, else the config's synthetic set
    def _data():
        from kltn_qat.data import synth_dataset
        if data or cfg.data.yaml: return {'yaml': str(Path(data or cfg.data.yaml).absolute())}
        return {'yaml': str(synth_dataset(out / 'data', train=cfg.data.train, valid=cfg.data.valid, test=cfg.data.test,
                                          seed=cfg.data.seed, preset=cfg.data.synth_preset, overwrite=True))}
    data_yaml = st.run('data', {'data': c['data'], 'given': data}, _data, lambda r: [r['yaml']])['yaml']

    # FP32 starting checkpoint: a given one, else trained here with the config's fp32 section
    def _fp32():
        from kltn_qat.training import train_fp32
        f = cfg.fp32; t = time.time()
        w = train_fp32(data_yaml, cfg.model.cfg, imgsz=imgsz or 640, epochs=f.epochs, batch=f.batch, nbs=f.nbs, lr0=f.lr0,
                       optimizer=f.optimizer, warmup_epochs=f.warmup_epochs, workers=f.workers, patience=f.patience,
                       mosaic=f.mosaic, close_mosaic=f.close_mosaic, device=cfg.device, seed=cfg.seed, project=out, name='fp32')
        return {'weights': str(w), 'seconds': time.time() - t}
    if fp32: fp32_w = {'weights': str(Path(fp32).absolute())}
    else: fp32_w = st.run('fp32', {'data': data_yaml, 'model': c['model'], 'fp32': c['fp32'], 'seed': cfg.seed}, _fp32, lambda r: [r['weights']])
    fp32_pt = fp32_w['weights']
    # the effective QAT recipe (image size, optimizer, LR from the FP32 model's own training unless the config sets them):
    # kltn_qat's QAT, the FP32 control epoch and Ultralytics' QAT all run it
    from kltn_qat.models.yolov8_qat import fp32_train_args
    from kltn_qat.training import qat_recipe, recipe_lines
    recipe = qat_recipe(cfg.qat, fp32_train_args(fp32_pt), cfg.model.imgsz)
    imgsz = recipe['imgsz'][0]
    log('QAT recipe:\n' + '\n'.join(recipe_lines(recipe)))
    fp32_epoch_baseline = epoch_seconds(Path(fp32_pt).parent.parent / 'results.csv')

    # FP32 fine-tuning control: the QAT settings without quantization, for the per-epoch time ratio (same process, same load)
    def _control():
        from kltn_qat.training import train_fp32
        q = cfg.qat; t = time.time()
        w = train_fp32(data_yaml, fp32_pt, imgsz=imgsz, epochs=1, batch=q.batch, nbs=q.batch, lr0=recipe['lr'][0],
                       optimizer=recipe['optimizer'][0], warmup_epochs=0, workers=q.workers, mosaic=q.mosaic,
                       close_mosaic=0, device=cfg.device, seed=cfg.seed, project=out, name='fp32_control')
        return {'weights': str(w), 'seconds': time.time() - t, 'epoch_s': epoch_seconds(out / 'fp32_control' / 'results.csv')}
    control = st.run('fp32_control', {'fp32': fp32_pt, 'qat': c['qat'], 'imgsz': imgsz}, _control) if fp32_control else None
    fp32_epoch = (control or {}).get('epoch_s') or fp32_epoch_baseline

    # FP32 ONNX (Ultralytics' exporter, with the same DFL softmax layout as kltn_qat's INT8 export)
    def _fp32_onnx():
        from kltn_qat.deployment.export import export_fp32
        import inspect
        kw = {'fast_dfl': True} if 'fast_dfl' in inspect.signature(export_fp32).parameters else {}
        return {'onnx': str(export_fp32(fp32_pt, out / 'onnx' / 'fp32.onnx', imgsz=imgsz, opset=opset, **kw)), 'fast_dfl': bool(kw)}
    fx = st.run('fp32_onnx', {'fp32': fp32_pt, 'imgsz': imgsz, 'opset': opset}, _fp32_onnx, lambda r: [r['onnx']])
    fp32_onnx = fx['onnx']

    # onnxruntime's own static PTQ, calibrated on the same train images as kltn_qat PTQ
    from kltn_qat.quantization.calibration import image_files
    calib = [str(p) for p in image_files(data_yaml, cfg.calibration.split)[:cfg.calibration.n_images]]
    def _ort(exclude_head):
        def f():
            from kltn_qat.deployment.benchmark import ort_quantize_static
            t = time.time()
            p = ort_quantize_static(fp32_onnx, calib, out / 'onnx' / f"ort_ptq_{'headfloat' if exclude_head else 'whole'}.onnx",
                                    exclude_head=exclude_head, n_images=len(calib))
            return {'onnx': str(p), 'seconds': time.time() - t}
        return f
    ort = {k: st.run(k, {'fp32_onnx': fp32_onnx, 'calib': calib, 'exclude_head': e}, _ort(e), lambda r: [r['onnx']])
           for k, e in (('ort_ptq_whole', False), ('ort_ptq_headfloat', True))}

    # kltn_qat PTQ; exports are keyed on the exporter's source too, so they re-run when it changes
    import hashlib, importlib.util
    src_sha = lambda *mods: hashlib.sha1(b''.join(Path(importlib.util.find_spec(m).origin).read_bytes() for m in mods)).hexdigest()[:12]
    exporter = src_sha('kltn_qat.deployment.export')
    # PTQ and QAT are keyed on the source of what defines the quantized model and its training, so they re-run when it changes
    qcode = src_sha(*[f'kltn_qat.{m}' for m in ('quantization.schemes', 'quantization.observers', 'quantization.fake_quantize',
                                                'quantization.qconfig', 'quantization.fusion', 'quantization.qat_modules',
                                                'quantization.calibration', 'models.yolov8_qat', 'models.ptq', 'training')])
    def _export(src, dst):
        try: return __export(src, dst)
        except Exception as e: errors[Path(dst).stem] = f"{type(e).__name__}: {e}"; log(traceback.format_exc()); return None
    def __export(src, dst):
        def f():
            from kltn_qat.deployment.export import export_onnx
            return {'onnx': str(export_onnx(src, out / 'onnx' / dst, opset=opset, imgsz=imgsz))}
        key = {'src': src, 'src_sha1': hashlib.sha1(Path(src).read_bytes()).hexdigest()[:12], 'opset': opset, 'imgsz': imgsz, 'exporter': exporter}
        return st.run(Path(dst).stem, key, f, lambda r: [r['onnx']])['onnx']   # keyed on the checkpoint's content: a retrained model re-exports
    def _ptq():
        from kltn_qat.models.ptq import calibrate_checkpoint
        from kltn_qat.quantization.qconfig import QConfigMap
        t = time.time()
        p = calibrate_checkpoint(fp32_pt, data_yaml, out / 'ptq.pt', n_images=cfg.calibration.n_images, imgsz=imgsz,
                                 qconfig=QConfigMap.from_dict(cfg.qconfig), batch=cfg.calibration.batch, device=cfg.device or None)
        return {'weights': str(p), 'seconds': time.time() - t}
    k_ptq = {'fp32': fp32_pt, 'data': data_yaml, 'qconfig': c['qconfig'], 'calibration': c['calibration'], 'imgsz': imgsz, 'code': qcode}
    ptq = st.run('kltn_ptq', k_ptq, _ptq, lambda r: [r['weights']])
    ptq['onnx'] = _export(ptq['weights'], 'kltn_ptq_int8.onnx')

    # kltn_qat QAT, one run per seed, all from the same PTQ checkpoint
    qat = {}
    for s in seeds:
        def _qat(s=s):
            from kltn_qat.training import train_qat
            t = time.time()
            r = train_qat(data_yaml, fp32_pt, qconfig=cfg.qconfig, qat=cfg.qat, imgsz=imgsz, device=cfg.device, seed=s, project=out, name=f'qat_s{s}', ptq=ptq['weights'])
            return {'weights': str(r['qat']), 'seconds': time.time() - t, 'epoch_s': epoch_seconds(r['results_csv'])}
        try:
            qat[s] = st.run(f'kltn_qat_s{s}', {'ptq': k_ptq, 'qat': c['qat'], 'seed': s}, _qat, lambda r: [r['weights']])
            qat[s]['onnx'] = _export(qat[s]['weights'], f'kltn_qat_s{s}_int8.onnx')
        except Exception as e: errors[f'kltn_qat_s{s}'] = f"{type(e).__name__}: {e}"; log(traceback.format_exc())

    # Ultralytics' own QAT (optional peer)
    ultra, (ok, why) = {}, modelopt_status(ultra_python)
    if ok:
        notes.append(f"Ultralytics QAT ran with {why}")
        for s in (seeds if ultra_seeds is None else ultra_seeds):
            def _ultra(s=s): return ultralytics_qat(ultra_python, fp32_pt, data_yaml, cfg, s, out, cfg.device, recipe)
            try:
                r = st.run(f'ultra_qat_s{s}', {'fp32': fp32_pt, 'data': data_yaml, 'qat': c['qat'], 'seed': s, 'imgsz': imgsz}, _ultra,
                           lambda r: [r['onnx']])
                r['epoch_s'] = epoch_seconds(r['results_csv']); ultra[s] = r
            except Exception as e: errors[f'ultra_qat_s{s}'] = f"{type(e).__name__}: {e}"; log(f"[ultra_qat_s{s}] {e}")
        if not ultra: notes.append(f"Ultralytics QAT row skipped: every seed failed ({errors.get(f'ultra_qat_s{seeds[0]}')})")
    else: notes.append(f"Ultralytics QAT row skipped: {why}")

    # every model: (row, seed, path, tune seconds, seconds per epoch)
    runs = [('fp32_pt', None, fp32_pt, None, None), ('fp32_onnx', None, fp32_onnx, None, None),
            ('ort_ptq_whole', None, ort['ort_ptq_whole']['onnx'], ort['ort_ptq_whole']['seconds'], None),
            ('ort_ptq_headfloat', None, ort['ort_ptq_headfloat']['onnx'], ort['ort_ptq_headfloat']['seconds'], None),
            ('kltn_ptq', None, ptq['onnx'], ptq['seconds'], None)]
    if control: runs.insert(1, ('fp32_control', None, control['weights'], control['seconds'], control['epoch_s']))
    runs += [('kltn_qat', s, r['onnx'], r['seconds'], r['epoch_s']) for s, r in qat.items()]
    runs += [('ultralytics_qat', s, r['onnx'], r['seconds'], r['epoch_s']) for s, r in ultra.items()]
    runs = [r for r in runs if r[2]]   # a failed export is listed in `errors`
    name = lambda row, s: row if s is None else f'{row}_s{s}'

    # accuracy: the same Ultralytics validator for every model, on the test split
    def _eval():
        from kltn_qat.evaluation import evaluate
        res = {}
        for row, s, p, *_ in runs:
            try:
                e = evaluate(p, data_yaml, 'test', imgsz=imgsz, batch=1 if p.endswith('.onnx') else 8, device='cpu',
                             workdir=out / 'eval' / name(row, s))
                res[name(row, s)] = {k: e[k] for k in ('map50', 'map50_95', 'precision', 'recall', 'split', 'images')}
            except Exception as ex: res[name(row, s)] = {'error': f"{type(ex).__name__}: {ex}"}
        return res
    fid = lambda p: (str(p), os.stat(p).st_mtime_ns, os.stat(p).st_size)   # a re-exported file invalidates evaluation and benchmark
    ev = st.run('evaluate', {'models': [(name(r, s), fid(p)) for r, s, p, *_ in runs], 'imgsz': imgsz}, _eval)

    # latency: every ONNX model in ONE interleaved benchmark call
    def _bench():
        from kltn_qat.deployment.benchmark import benchmark
        b = cfg.benchmark
        df = benchmark([(name(r, s), p) for r, s, p, *_ in runs if p.endswith('.onnx')], threads=b.threads, runs=b.runs,
                       warmup=b.warmup, memory=False, json_out=out / 'benchmark.json', plot_out=out / 'benchmark.png')
        return {'models': json.loads(df.to_json(orient='records')), 'settings': json.loads(json.dumps(df.attrs, default=str))}
    bench = st.run('benchmark', {'models': [(name(r, s), fid(p)) for r, s, p, *_ in runs], 'benchmark': c['benchmark'], 'cpu_ms': 1}, _bench)
    lat = {m['name']: m for m in bench['models']}

    per_model = {}
    for row, s, p, tune, ep in runs:
        n = name(row, s); e = ev.get(n, {})
        per_model[n] = {'row': row, 'seed': s, 'path': str(p), 'map50': e.get('map50'), 'map50_95': e.get('map50_95'),
                        'latency_ms': lat.get(n, {}).get('median_ms'), 'p90_ms': lat.get(n, {}).get('p90_ms'),
                        'cpu_ms': lat.get(n, {}).get('cpu_ms'),
                        'size_mb': round(Path(p).stat().st_size / 2**20, 3) if p.endswith('.onnx') else None,
                        'int8_initializers': int8_inits(p) if p.endswith('.onnx') else None,
                        'tune_s': tune, 'epoch_s': ep, 'images': e.get('images'), 'error': e.get('error')}
    res = {'command': ' '.join(shlex.quote(a) for a in sys.argv), 'config': c, 'imgsz': imgsz, 'recipe': {k: v[0] for k, v in recipe.items()}, 'data': data_yaml, 'fp32': fp32_pt,
           'seeds': seeds, 'calibration_images': len(calib),
           'fp32_epoch_s': {'used': fp32_epoch, 'control_1_epoch': (control or {}).get('epoch_s'), 'baseline_training': fp32_epoch_baseline},
           'fp32_onnx_fast_dfl': fx.get('fast_dfl'), 'exporter_sha1': exporter, 'per_model': per_model, 'benchmark_settings': bench['settings'],
           'notes': notes, 'errors': errors}
    res['table'] = table(res)
    mach['end'] = machine(); res['machine'] = mach
    res['seconds'] = round(time.time() - t_start, 1)
    res['stage_seconds'] = {p.stem: json.loads(p.read_text()).get('seconds') for p in sorted((out / 'stages').glob('*.json'))}
    res['stage_seconds_total'] = round(sum(v or 0 for v in res['stage_seconds'].values()), 1)
    write(res, out)
    return res


def _ms(v:list)->dict:
    v = [x for x in v if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v: return {'mean': None, 'std': None, 'n': 0}
    return {'mean': float(np.mean(v)), 'std': float(np.std(v, ddof=1)) if len(v) > 1 else None, 'n': len(v)}

def table(res:dict)->list[dict]:
    "One row per method: mean (std over seeds, n) of each column; deltas against FP32 .pt, ratios against FP32 ONNX."
    pm = res['per_model']
    ref_map = pm.get('fp32_pt', {}).get('map50_95'); ref_map50 = pm.get('fp32_pt', {}).get('map50')
    ref_lat = pm.get('fp32_onnx', {}).get('latency_ms'); ep = res['fp32_epoch_s']['used']; ref_cpu = pm.get('fp32_onnx', {}).get('cpu_ms')
    rows = []
    for key, label in ROWS.items():
        ms = [m for m in pm.values() if m['row'] == key]
        if not ms: continue
        col = lambda f: _ms([f(m) for m in ms])
        d = lambda v, r: None if v is None or r is None else v - r
        rows.append({'key': key, 'label': label, 'seeds': [m['seed'] for m in ms if m['seed'] is not None],
                     'map50': col(lambda m: m['map50']), 'map50_95': col(lambda m: m['map50_95']),
                     'd_map50_pts': col(lambda m: None if d(m['map50'], ref_map50) is None else 100 * d(m['map50'], ref_map50)),
                     'd_map50_95_pts': col(lambda m: None if d(m['map50_95'], ref_map) is None else 100 * d(m['map50_95'], ref_map)),
                     'latency_ms': col(lambda m: m['latency_ms']),
                     'latency_x': col(lambda m: None if m['latency_ms'] is None or not ref_lat else m['latency_ms'] / ref_lat),
                     'cpu_ms': col(lambda m: m.get('cpu_ms')),
                     'cpu_x': col(lambda m: None if m.get('cpu_ms') is None or not ref_cpu else m['cpu_ms'] / ref_cpu),
                     'size_mb': col(lambda m: m['size_mb']), 'tune_s': col(lambda m: m['tune_s']),
                     'tune_in_fp32_epochs': col(lambda m: None if m['tune_s'] is None or not ep else m['tune_s'] / ep),
                     'epoch_x': col(lambda m: None if m['epoch_s'] is None or not ep else m['epoch_s'] / ep)})
    return rows


COLS = [('map50', 'mAP50', 3), ('map50_95', 'mAP50-95', 3), ('d_map50_95_pts', 'Δ mAP50-95 vs FP32 (pts)', 2),
        ('latency_ms', 'latency (ms)', 2), ('latency_x', '× FP32 ONNX', 2), ('cpu_ms', 'CPU time (ms)', 2), ('cpu_x', '× FP32', 2), ('size_mb', 'ONNX size (MB)', 2),
        ('tune_s', 'fine-tune / calib. (s)', 0), ('epoch_x', 's per epoch × FP32 epoch', 2)]

def _fmt(c:dict, nd:int, sign:str='')->str:
    if c['mean'] is None: return '—'
    s = f"{c['mean']:{sign}.{nd}f}"
    if c['n'] > 1: s += f" ± {c['std']:.{nd}f}"
    return s

def markdown(res:dict)->str:
    "The results table and how it was produced, as Markdown."
    m0, m1 = res['machine']['start'], res['machine']['end']
    b = res['benchmark_settings']; c = res['config']
    ev = next((v for v in res['per_model'].values() if v.get('map50') is not None), {})
    lines = ['| method | ' + ' | '.join(h for _, h, _ in COLS) + ' |', '|---' * (len(COLS) + 1) + '|']
    for r in res['table']:
        lab = r['label'] + (f" (seeds {', '.join(map(str, r['seeds']))})" if r['seeds'] else '')
        lines.append(f"| {lab} | " + ' | '.join(_fmt(r[k], nd, '+' if k.startswith('d_') else '') for k, _, nd in COLS) + ' |')
    ep = res['fp32_epoch_s']
    tot = res.get('stage_seconds_total')
    meta = [f"Command: `{res['command']}` ({res['seconds'] / 60:.0f} min in this invocation"
            + (f"; all stages, cached ones included, took {tot / 60:.0f} min" if tot else '') + ").", '',
            f"Machine: {m0['cpu']}, {m0['cores']} cores, onnxruntime {m0['onnxruntime']}, torch {m0['torch']}, "
            f"ultralytics {m0['ultralytics']}, GPU: {m0.get('gpu') or 'none'}. Load average (1 min) {m0['loadavg'][0]} at start, "
            f"{m1['loadavg'][0]} at the end; during the latency benchmark {b.get('loadavg', ['?'])[0]} → {b.get('loadavg_end', ['?'])[0]}. "
            f"{m0['time']}.", '',
            f"Setup: config `{c['name']}`, {res.get('imgsz') or c['model']['imgsz']} px, FP32 `{res['fp32']}`, QAT {c['qat']['epochs']} epochs × "
            f"{len(res['seeds'])} seeds ({', '.join(map(str, res['seeds']))}), calibration {res['calibration_images']} train images "
            f"(the same for onnxruntime and kltn_qat PTQ). mAP on the test split ({ev.get('images', '?')} images) with the same "
            f"Ultralytics validator for every model. Latency: onnxruntime CPU, {b.get('threads')} threads, batch 1, median of "
            f"{b.get('runs')} rounds, all models interleaved in one call; CPU time: median process CPU time of one inference in the "
            f"same rounds (less sensitive to other processes' load than wall time). Mean ± std over seeds where a row has several.", '',
            f"Δ: against FP32 PyTorch. Latency ×: against FP32 ONNX. Fine-tune time: QAT wall time (training with its per-epoch "
            f"validation; ONNX export not included) or calibration time for PTQ rows. s per epoch × FP32 epoch: QAT seconds per "
            f"epoch over one FP32 fine-tuning epoch with the same batch/size/data run in this process "
            f"({ep['used']:.1f} s; the baseline's own training ran at {ep['baseline_training'] or float('nan'):.1f} s/epoch)."
            if ep['used'] else "FP32 epoch time unknown.", '']
    notes = [f"- {n}" for n in res['notes']] + [f"- error in {k}: {v}" for k, v in res['errors'].items()]
    return '\n'.join(lines + [''] + meta + (['Notes:', ''] + notes if notes else []))


def plot(res:dict, path:Path):
    "mAP50-95 against latency (error bars: std over seeds) and the latency bars."
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    rows = [r for r in res['table'] if r['latency_ms']['mean'] is not None and r['map50_95']['mean'] is not None]
    fig, axs = plt.subplots(1, 2, figsize=(12, 4))
    for i, r in enumerate(rows):
        axs[0].errorbar(r['latency_ms']['mean'], r['map50_95']['mean'], xerr=r['latency_ms']['std'] or 0,
                        yerr=r['map50_95']['std'] or 0, fmt='o', color=f'C{i}', capsize=3, label=r['label'])
    ref = next((r for r in res['table'] if r['key'] == 'fp32_pt'), None)
    if ref and ref['map50_95']['mean'] is not None: axs[0].axhline(ref['map50_95']['mean'], ls='--', c='gray', lw=1, label='FP32 (PyTorch)')
    axs[0].set_xlabel('onnxruntime latency, batch 1 (ms)'); axs[0].set_ylabel('mAP50-95 (test)'); axs[0].legend(fontsize=7)
    y = np.arange(len(rows))
    axs[1].barh(y, [r['latency_ms']['mean'] for r in rows], xerr=[r['latency_ms']['std'] or 0 for r in rows],
                color=[f'C{i}' for i in range(len(rows))], capsize=3)
    for i, r in enumerate(rows):
        axs[1].text(r['latency_ms']['mean'], i, f"  {r['latency_ms']['mean']:.1f} ms ({r['latency_x']['mean']:.2f}×)", va='center', fontsize=8)
    axs[1].set_yticks(y, [r['label'] for r in rows], fontsize=8); axs[1].invert_yaxis(); axs[1].set_xlabel('latency (ms)')
    axs[1].set_xlim(0, max(r['latency_ms']['mean'] for r in rows) * 1.5)
    m = res['machine']['start']
    fig.suptitle(f"{res['config']['name']}, {res['config']['model']['imgsz']} px; {m['cpu']}, "
                 f"{res['benchmark_settings'].get('threads')} threads", fontsize=10)
    fig.tight_layout(); fig.savefig(path, dpi=110, bbox_inches='tight'); plt.close(fig)


def write(res:dict, out:Path):
    (out / 'compare.json').write_text(json.dumps(res, indent=1, default=str))
    (out / 'compare.md').write_text(markdown(res) + '\n')
    plot(res, out / 'compare.png')


def check(res:dict)->list[str]:
    "What is missing or broken in a results dict (empty: all good)."
    bad = [f"{k}: {v}" for k, v in res['errors'].items()]
    for n, m in res['per_model'].items():
        if m.get('error'): bad.append(f"{n}: {m['error']}")
        for k in ('map50', 'map50_95') + (('latency_ms', 'size_mb') if m['path'].endswith('.onnx') else ()):
            v = m.get(k)
            if v is None or not math.isfinite(v): bad.append(f"{n}: {k} is {v}")
    keys = {r['key'] for r in res['table']}
    bad += [f"row {k} missing" for k in ('fp32_pt', 'fp32_onnx', 'ort_ptq_whole', 'ort_ptq_headfloat', 'kltn_ptq', 'kltn_qat') if k not in keys]
    return bad


def update_readme(name:str, res:dict)->bool:
    "Replace the block between `<!-- results:NAME -->` and `<!-- /results:NAME -->` in bench/README.md with the table."
    p = BENCH / 'README.md'
    if not p.exists(): return False
    t = p.read_text(); a, b = f'<!-- results:{name} -->', f'<!-- /results:{name} -->'
    if a not in t or b not in t: return False
    body = markdown(res) + f"\n\n![comparison](results/{name}.png)\n"
    p.write_text(t[:t.index(a) + len(a)] + '\n' + body + t[t.index(b):])
    return True


def main(argv=None)->int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument('--config', default='configs/quick.yaml', help='study config (configs/quick.yaml on CPU, configs/full.yaml on a GPU)')
    p.add_argument('--out', default=None, help='run folder (default runs/bench_<config name>, runs/bench_smoke with --smoke)')
    p.add_argument('--seeds', type=int, nargs='+', default=None, help='QAT seeds (default 0 1 2; 0 1 with --smoke)')
    p.add_argument('--fp32', default=None, help='FP32 starting checkpoint (an Ultralytics .pt); default: train one with the config')
    p.add_argument('--data', default=None, help="a data.yaml; default: the config's data (synthetic set)")
    p.add_argument('--device', default=None, help="override the config's device ('' CUDA when present, 'cpu')")
    p.add_argument('--ultralytics-python', default=os.environ.get('KLTN_BENCH_ULTRALYTICS_PYTHON'),
                   help="a python with ultralytics + nvidia-modelopt, for the Ultralytics QAT row (never kltn_qat's venv)")
    p.add_argument('--ultralytics-seeds', type=int, nargs='+', default=None, help='seeds for the Ultralytics QAT row (default: --seeds)')
    p.add_argument('--no-fp32-control', action='store_true', help='skip the 1-epoch FP32 fine-tuning used for the per-epoch time ratio')
    p.add_argument('--runs', type=int, default=None, help="benchmark rounds (default: the config's)")
    p.add_argument('--results', default=None, help='also copy compare.{json,md,png} to bench/results/NAME.*')
    p.add_argument('--force', action='store_true', help='recompute every cached stage')
    p.add_argument('--smoke', action='store_true', help='tiny end-to-end run from scratch (16 train images, 1 epoch, 128 px, every stage recomputed); exit 1 on any failure')
    a = p.parse_args(argv)
    over = copy.deepcopy(SMOKE) if a.smoke else {}
    if a.runs: over.setdefault('benchmark', {})['runs'] = a.runs
    cfg = load_config(a.config, over)
    if a.device is not None: cfg.device = a.device
    if a.smoke: cfg.name = f'{cfg.name}_smoke'
    seeds = a.seeds or ([0, 1] if a.smoke else [0, 1, 2])
    out = Path(a.out or ('runs/bench_smoke' if a.smoke else f'runs/bench_{cfg.name}'))
    set_seed(cfg.seed)
    try: res = compare(cfg, out, seeds, a.fp32, a.data, a.ultralytics_python, not a.no_fp32_control, a.force or a.smoke, a.ultralytics_seeds)
    except Exception:
        traceback.print_exc(); print('compare.py: FAILED', file=sys.stderr); return 1
    print(markdown(res))
    if a.results:
        d = BENCH / 'results'; d.mkdir(exist_ok=True)
        for ext in ('json', 'md', 'png'): shutil.copy(out / f'compare.{ext}', d / f'{a.results}.{ext}')
        print(f"copied to {d}/{a.results}.{{json,md,png}}")
        if update_readme(a.results, res): print(f"updated the '{a.results}' table in {BENCH / 'README.md'}")
    bad = check(res)
    if bad:
        print('compare.py: problems:\n  ' + '\n  '.join(bad), file=sys.stderr)
        return 1 if a.smoke else 0
    print(f"compare.py: OK ({out / 'compare.json'})")
    return 0


if __name__ == '__main__': sys.exit(main())
