"""What the SiLU costs in onnxruntime's integer graph, and what a ReLU network would run at (issue 16), in one run.

Speed only: the networks are the given FP32 model with every SiLU kept or swapped for ReLU (the swapped one is not
trained: its accuracy is not measured here), calibrated on the dataset's images, exported with the project's
exporters (`export_fp32`, `export_onnx`; both with the last-axis DFL and, with --topk, the candidates-only head),
timed interleaved by `kltn_qat.deployment.benchmark.benchmark`, and broken down by operator type (`op_profile`).

    python bench/speed_silu.py --weights bench/models/quick_converged_yolov8n.pt --data DATA/data.yaml --out /tmp/silu
"""
import argparse, copy
from pathlib import Path
import pandas as pd
from torch import nn
from kltn_qat.models.yolov8_qat import load_fp32, prepare_qat
from kltn_qat.quantization.calibration import calibrate
from kltn_qat.deployment.export import export_fp32, export_onnx, inspect_ort_graph
from kltn_qat.deployment.benchmark import benchmark, print_benchmark, op_profile


def relu_copy(model:nn.Module)->nn.Module:
    "A copy of an Ultralytics model with every SiLU replaced by a ReLU."
    m = copy.deepcopy(model)
    for mod in m.modules():
        if isinstance(getattr(mod, 'act', None), nn.SiLU): mod.act = nn.ReLU()
    return m


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--weights', default='bench/models/quick_converged_yolov8n.pt'); ap.add_argument('--data', required=True)
    ap.add_argument('--out', default='/tmp/speed_silu'); ap.add_argument('--imgsz', type=int, default=640)
    ap.add_argument('--topk', type=int, default=300); ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--runs', type=int, default=40); ap.add_argument('--qconfig', default='w8a8')
    a = ap.parse_args()
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    fp32 = load_fp32(a.weights); relu = relu_copy(fp32)
    files = {}
    for name, m in (('silu', fp32), ('relu', relu)):
        files[f'fp32_{name}'] = export_fp32(m, out/f'fp32_{name}.onnx', imgsz=a.imgsz, fast_dfl=True, topk=a.topk)
        q = calibrate(prepare_qat(m, a.qconfig), a.data, n_batches=8, imgsz=a.imgsz, batch=4, progress=False)
        files[f'int8_{name}'] = export_onnx(q, out/f'int8_{name}.onnx', imgsz=a.imgsz, topk=a.topk)
    print({k: {c: inspect_ort_graph(f)[c] for c in ('qlinear_conv', 'float_conv', 'qlinear_other')} for k, f in files.items()})
    print_benchmark(benchmark(list(files.items()), threads=a.threads, runs=a.runs, memory=False))
    ops = pd.DataFrame({k: op_profile(f, threads=a.threads, runs=20).ms for k, f in files.items()}).fillna(0)
    ops.loc['TOTAL'] = ops.sum()
    print(ops.sort_values('int8_silu', ascending=False).head(12).round(2).to_string())


if __name__ == '__main__': main()
