"""What a ReLU network costs in accuracy and gains in speed (issue 16's SiLU lever), measured in one run.

onnxruntime folds a ReLU after an integer convolution into its requantization, while each SiLU costs a
QLinearSigmoid and a QLinearMul (a third of the INT8 kernel time at 640 px). This study swaps every SiLU of a trained
FP32 model for ReLU, fine-tunes the swapped network with fake quantization (`train_qat`) and the original SiLU model as
distillation teacher — the product path, `qat.activation: relu` in `train_qat` — and scores every model on the test split at the model's own size:

  fp32_silu        the FP32 model as trained
  ptq_silu         its PTQ (fake-quant .pt) and INT8 ONNX: what the default pipeline ships without QAT
  fp32_relu_swap   the swapped network before any training (how much the swap breaks)
  qat_relu         the swapped network after QAT (`qat_best.pt`, best of its PTQ and its QAT epochs on validation) and its INT8 ONNX
  qat_silu_control with --control: the SiLU network through the same QAT recipe (epochs, rate, distillation, freezes), so
                   that the swap's own cost is read at equal training, not against a model that got less

Then latency at 640 px (onnxruntime, 1 and 2 threads, interleaved): FP32 SiLU with the same head, INT8 SiLU, INT8 ReLU.

    python bench/act_swap.py --data runs/converged_big/data/data.yaml --epochs 8 --results act_swap
"""
import argparse, json, os, time
from pathlib import Path

os.environ.setdefault('YOLO_OFFLINE', '1'); os.environ.setdefault('YOLO_AUTOINSTALL', 'false'); os.environ.setdefault('YOLO_VERBOSE', 'false')
BENCH = Path(__file__).resolve().parent


def swapped_checkpoint(src:Path, dst:Path)->Path:
    "An Ultralytics .pt like `src` holding `swap_activation(model)` (every SiLU a ReLU, the yaml saying so; no EMA): the untrained row."
    import torch
    from kltn_qat.models.yolov8_qat import swap_activation
    ck = torch.load(src, map_location='cpu', weights_only=False)
    ck['model'], ck['ema'] = swap_activation(ck['model'], 'relu'), None
    torch.save(ck, dst); return dst


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', default=str(BENCH / 'models' / 'quick_converged_yolov8n.pt'))
    ap.add_argument('--data', required=True, help='data.yaml with train, val and test splits')
    ap.add_argument('--out', default='runs/act_swap'); ap.add_argument('--epochs', type=int, default=8)
    ap.add_argument('--lr-factor', type=float, default=0.5, help="qat.lr_factor: fraction of the FP32 run's lr0 (the swap needs more than the final rate)")
    ap.add_argument('--distill', type=float, default=1.0, help='qat.distill_weight (logit distillation from the SiLU model)')
    ap.add_argument('--seed', type=int, default=0); ap.add_argument('--runs', type=int, default=30)
    ap.add_argument('--speed-imgsz', type=int, default=640); ap.add_argument('--results', default=None)
    ap.add_argument('--freeze-epoch', type=int, default=None, help='qat.freeze_bn_epoch and freeze_observer_epoch (default: the last epoch)')
    ap.add_argument('--control', action='store_true', help='also run the same QAT recipe on the SiLU network')
    ap.add_argument('--control-only', action='store_true', help="only the control, added to an earlier run's act_swap.json in --out")
    a = ap.parse_args(argv)
    from kltn_qat.models.ptq import calibrate_checkpoint
    from kltn_qat.training import train_qat
    from kltn_qat.evaluation import evaluate
    from kltn_qat.deployment.export import export_onnx, export_fp32
    from kltn_qat.deployment.benchmark import benchmark, op_profile
    out = Path(a.out).absolute(); out.mkdir(parents=True, exist_ok=True)
    fe = a.epochs - 1 if a.freeze_epoch is None else a.freeze_epoch
    qat = {'epochs': a.epochs, 'lr_factor': a.lr_factor, 'distill_weight': a.distill, 'distill_kind': 'logit',
           'freeze_bn_epoch': fe, 'freeze_observer_epoch': fe}
    score = lambda w, name: evaluate(w, a.data, 'test', batch=1 if str(w).endswith('.onnx') else 16, device='cpu', workdir=out / 'eval' / name)
    def control(rows):
        t = time.time()
        r = train_qat(a.data, a.model, qat=qat, seed=a.seed, project=out, name='qat_silu_control', exist_ok=True)
        rows['qat_silu_control'] = {**score(r['qat'], 'qat_silu_control'), 'selected': r['selected'], 'train_seconds': round(time.time() - t)}
        rows['qat_silu_control_onnx_int8'] = score(export_onnx(r['qat'], out / 'qat_silu_control_int8.onnx'), 'qat_silu_control_onnx')
    if a.control_only:
        res = json.loads((out / 'act_swap.json').read_text()); control(res['rows']); return write(res, out, a.results)
    rows, t0 = {}, time.time()
    rows['fp32_silu'] = score(a.model, 'fp32_silu')
    ptq = calibrate_checkpoint(a.model, a.data, out / 'ptq_silu.pt')
    rows['ptq_silu'] = score(ptq, 'ptq_silu'); rows['ptq_silu_onnx_int8'] = score(export_onnx(ptq, out / 'ptq_silu_int8.onnx'), 'ptq_silu_onnx')
    rows['fp32_relu_swap'] = score(swapped_checkpoint(Path(a.model), out / 'fp32_relu_swap.pt'), 'fp32_relu_swap')
    # the swapped network has to learn new activations: BN statistics and activation ranges move with it until the last epoch
    t1 = time.time()
    r = train_qat(a.data, a.model, qat={**qat, 'activation': 'relu'}, seed=a.seed, project=out, name='qat_relu', exist_ok=True)
    train_s = round(time.time() - t1)
    rows['qat_relu'] = {**score(r['qat'], 'qat_relu'), 'selected': r['selected']}
    rows['qat_relu_onnx_int8'] = score(export_onnx(r['qat'], out / 'qat_relu_int8.onnx'), 'qat_relu_onnx')
    if a.control: control(rows)
    # speed at the deployment size, the FP32 model with the same head as the INT8 exports
    s = a.speed_imgsz
    files = [('fp32_silu', export_fp32(a.model, out / f'fp32_silu_{s}.onnx', imgsz=s)),
             ('int8_silu', export_onnx(ptq, out / f'int8_silu_{s}.onnx', imgsz=s)),
             ('int8_relu', export_onnx(r['qat'], out / f'int8_relu_{s}.onnx', imgsz=s))]
    speed = {}
    for th in (1, 2):
        df = benchmark(files, threads=th, runs=a.runs, memory=False)
        speed[str(th)] = {n: {'median_ms': float(m), 'latency_x': float(x)} for n, m, x in zip(df['name'], df['median_ms'], df['latency_x'])}
    ops = {n: op_profile(f, threads=1, runs=10).ms.round(2).head(6).to_dict() for n, f in files}
    meta = {'model': Path(a.model).name, 'qat': qat, 'seed': a.seed, 'train_seconds': train_s, 'seconds': round(time.time() - t0),
            'speed_imgsz': s, 'runs': a.runs, 'machine': {k: df.attrs.get(k) for k in ('cpu', 'cpu_flags', 'cores', 'onnxruntime', 'loadavg')}}
    return write({'rows': rows, 'speed': speed, 'ops_ms_1thread': ops, 'meta': meta}, out, a.results)


def write(res:dict, out:Path, results:str|None):
    (out / 'act_swap.json').write_text(json.dumps(res, indent=1, default=str))
    md = report(res)
    (out / 'act_swap.md').write_text(md); print(md)
    if results:
        (BENCH / 'results' / f'{results}.json').write_text(json.dumps(res, indent=1, default=str))
        (BENCH / 'results' / f'{results}.md').write_text(md)


def report(res:dict)->str:
    rows, sp, m = res['rows'], res['speed'], res['meta']
    f = rows['fp32_silu']['map50_95']
    lines = ['| model | mAP50 | mAP50-95 | Δ vs FP32 SiLU (pts) |', '|---|---|---|---|']
    for k, r in rows.items():
        lines.append(f"| {k}{' (kept: ' + r['selected'] + ')' if 'selected' in r else ''} | {r['map50']:.3f} | {r['map50_95']:.3f} | {100 * (r['map50_95'] - f):+.2f} |")
    lines += ['', f"| {m['speed_imgsz']} px, onnxruntime | 1 thread ms (× FP32) | 2 threads ms (× FP32) |", '|---|---|---|']
    for n in sp['1']:
        t1, t2 = sp['1'][n], sp['2'][n]
        lines.append(f"| {n} | {t1['median_ms']:.1f} ({t1['latency_x']:.2f}) | {t2['median_ms']:.1f} ({t2['latency_x']:.2f}) |")
    lines += ['', f"QAT of the swapped network: {json.dumps(m['qat'])}, seed {m['seed']}, teacher {m['model']} (SiLU), "
              f"{m['train_seconds']} s of training; whole study {m['seconds']} s. Scored on the test split at the model's own size."]
    if 'qat_silu_control' in rows:
        lines.append(f"`qat_silu_control`: the SiLU network through the same recipe ({rows['qat_silu_control']['train_seconds']} s): "
                     f"the swap's own cost at equal training is qat_relu minus it, "
                     f"{100 * (rows['qat_relu_onnx_int8']['map50_95'] - rows['qat_silu_control_onnx_int8']['map50_95']):+.2f} points in INT8 ONNX.")
    return '\n'.join(lines) + '\n'


if __name__ == '__main__': main()
