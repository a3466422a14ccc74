"""What the SiLU costs in onnxruntime's integer graph, and what a ReLU network would run at (issue 16), in one run.

Speed only: the networks are the given FP32 model with every SiLU kept or swapped for ReLU (the swapped one is not
trained: its accuracy is not measured here), calibrated on the dataset's images, exported with the project's
exporters (`export_fp32`, `export_onnx`; both with the last-axis DFL and, with --topk, the candidates-only head),
timed interleaved by `kltn_qat.deployment.benchmark.benchmark`, and broken down by operator type (`op_profile`).

Two rewrites of the SiLU network's INT8 file try to make the integer SiLU cheaper in onnxruntime without retraining:
  int8_silu_lut    each SiLU's QLinearSigmoid + QLinearMul replaced by one 256-entry table (`Cast` to int32 + `Gather`),
                   computed from the same scales and roundings: the same outputs bit for bit (checked here)
  int8_silu_float  the quantizer between Sigmoid and Mul removed: the SiLU runs in float between the conv's output
                   quantizer and the next one (Dequantize, Sigmoid, Mul, Quantize)
and one more asks what a LeakyReLU network would run at (speed only: its outputs are not a trained model's):
  int8_leaky       each SiLU's Sigmoid, its quantizer and the Mul replaced by one LeakyRelu(0.1) between the conv's
                   output quantizer and the SiLU's (onnxruntime: QLinearLeakyRelu, one table lookup, instead of
                   QLinearSigmoid + QLinearMul; unlike ReLU it is not folded into QLinearConv)

    python bench/speed_silu.py --weights bench/models/quick_converged_yolov8n.pt --data DATA/data.yaml --out /tmp/silu
"""
import argparse
from pathlib import Path
import pandas as pd
from kltn_qat.models.yolov8_qat import load_fp32, prepare_qat, swap_activation
from kltn_qat.quantization.calibration import calibrate
from kltn_qat.deployment.export import export_fp32, export_onnx, inspect_ort_graph
from kltn_qat.deployment.benchmark import benchmark, print_benchmark, op_profile


def _graph(path):
    import onnx
    m = onnx.load(path); g = m.graph
    cons, prod = {}, {o: n for n in g.node for o in n.output}
    for n in g.node:
        for i in n.input: cons.setdefault(i, []).append(n)
    return m, g, cons, prod


def silu_lut(src:Path, dst:Path)->Path:
    "`src` with every integer SiLU (Q → DQ → Sigmoid → Q → DQ → Mul → Q) computed by one table lookup."
    import numpy as np, onnx
    from onnx import helper, numpy_helper, TensorProto
    m, g, cons, prod = _graph(src)
    val = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    rm, after = set(), {}
    for sg in [n for n in g.node if n.op_type == 'Sigmoid']:
        dq_pre = prod.get(sg.input[0])
        if dq_pre is None or dq_pre.op_type != 'DequantizeLinear' or len(cons[dq_pre.output[0]]) != 2: continue
        mul = next(u for u in cons[dq_pre.output[0]] if u.op_type == 'Mul')
        q_sig = cons[sg.output[0]][0]; dq_sig = cons[q_sig.output[0]][0]; q_out = cons[mul.output[0]][0]
        (s1, z1), (s2, z2), (s3, z3) = [(np.float32(val[n.input[1]]), val[n.input[2]]) for n in (dq_pre, q_sig, q_out)]
        grid = lambda z: (np.iinfo(z.dtype).min, np.iinfo(z.dtype).max)
        codes = np.arange(256) if z1.dtype == np.uint8 else (np.arange(256) + 128) % 256 - 128      # Gather's index order (int8: -1 is 255)
        x = ((codes - int(z1)) * s1).astype(np.float32)                                              # every input code
        sq = np.clip(np.rint(1 / (1 + np.exp(-x.astype(np.float64))) / s2) + int(z2), *grid(z2))    # QLinearSigmoid
        y = (x * ((sq - int(z2)) * s2).astype(np.float32)).astype(np.float32)                      # QLinearMul
        t = np.clip(np.rint(y / s3) + int(z3), *grid(z3)).astype(z3.dtype)
        name = f"{sg.name}_lut"; g.initializer.append(numpy_helper.from_array(t, name))
        idx = dq_pre.input[0] + '_i32'
        after[dq_pre.input[0]] = [helper.make_node('Cast', [dq_pre.input[0]], [idx], to=TensorProto.INT32, name=name + '_cast'),
                                  helper.make_node('Gather', [name, idx], [q_out.output[0]], axis=0, name=name + '_gather')]
        rm |= {id(n) for n in (dq_pre, sg, q_sig, dq_sig, mul, q_out)}
    nodes = []
    for n in g.node:
        if id(n) not in rm: nodes.append(n)
        for o in n.output: nodes += after.get(o, [])
    del g.node[:]; g.node.extend(nodes)
    onnx.checker.check_model(m); onnx.save(m, dst); return dst


def silu_float(src:Path, dst:Path)->Path:
    "`src` without the quantizer between each SiLU's Sigmoid and Mul."
    import onnx
    m, g, cons, prod = _graph(src)
    rm = set()
    for sg in [n for n in g.node if n.op_type == 'Sigmoid']:
        q = cons[sg.output[0]]
        if len(q) != 1 or q[0].op_type != 'QuantizeLinear': continue
        dq = cons[q[0].output[0]]
        for u in cons[dq[0].output[0]]: u.input[:] = [sg.output[0] if i == dq[0].output[0] else i for i in u.input]
        rm |= {id(q[0]), id(dq[0])}
    nodes = [n for n in g.node if id(n) not in rm]; del g.node[:]; g.node.extend(nodes)
    onnx.save(m, dst); return dst


def silu_to_leaky(src:Path, dst:Path, alpha:float=0.1)->Path:
    "`src` with each integer SiLU (DQ → Sigmoid → Q → DQ → Mul → Q) replaced by DQ → LeakyRelu → Q, its scales kept (timing only)."
    import onnx
    from onnx import helper
    m, g, cons, prod = _graph(src)
    rm, swap = set(), {}
    for sg in [n for n in g.node if n.op_type == 'Sigmoid']:
        dq_pre = prod.get(sg.input[0])
        if dq_pre is None or dq_pre.op_type != 'DequantizeLinear': continue
        mul = next((u for u in cons[dq_pre.output[0]] if u.op_type == 'Mul'), None)
        if mul is None: continue
        q_sig = cons[sg.output[0]][0]; dq_sig = cons[q_sig.output[0]][0]
        swap[id(mul)] = helper.make_node('LeakyRelu', [dq_pre.output[0]], [mul.output[0]], alpha=alpha, name=mul.name + '_leaky')
        rm |= {id(sg), id(q_sig), id(dq_sig)}
    nodes = [swap.get(id(n), n) for n in g.node if id(n) not in rm]
    del g.node[:]; g.node.extend(nodes)
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in used]; del g.initializer[:]; g.initializer.extend(keep)
    onnx.checker.check_model(m); onnx.save(m, dst); return dst


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--weights', default='bench/models/quick_converged_yolov8n.pt'); ap.add_argument('--data', required=True)
    ap.add_argument('--out', default='/tmp/speed_silu'); ap.add_argument('--imgsz', type=int, default=640)
    ap.add_argument('--topk', type=int, default=300); ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--runs', type=int, default=40); ap.add_argument('--qconfig', default='w8a8')
    a = ap.parse_args()
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    fp32 = load_fp32(a.weights); relu = swap_activation(fp32, 'relu')
    files = {}
    for name, m in (('silu', fp32), ('relu', relu)):
        files[f'fp32_{name}'] = export_fp32(m, out/f'fp32_{name}.onnx', imgsz=a.imgsz, fast_dfl=True, topk=a.topk)
        q = calibrate(prepare_qat(m, a.qconfig), a.data, n_batches=8, imgsz=a.imgsz, batch=4, progress=False)
        files[f'int8_{name}'] = export_onnx(q, out/f'int8_{name}.onnx', imgsz=a.imgsz, topk=a.topk)
    files['int8_silu_lut'] = silu_lut(files['int8_silu'], out/'int8_silu_lut.onnx')
    files['int8_silu_float'] = silu_float(files['int8_silu'], out/'int8_silu_float.onnx')
    files['int8_leaky'] = silu_to_leaky(files['int8_silu'], out/'int8_leaky.onnx')
    import numpy as np
    from kltn_qat.deployment.export import make_session
    x = np.random.default_rng(0).random((1, 3, a.imgsz, a.imgsz), dtype=np.float32)
    run = lambda f: make_session(f, 1).run(None, {'images': x})[0]
    print('int8_silu_lut vs int8_silu, largest output difference:', float(np.abs(run(files['int8_silu_lut']) - run(files['int8_silu'])).max()))
    print({k: {c: inspect_ort_graph(f)[c] for c in ('qlinear_conv', 'float_conv', 'qlinear_other')} for k, f in files.items()})
    print_benchmark(benchmark(list(files.items()), threads=a.threads, runs=a.runs, memory=False))
    ops = pd.DataFrame({k: op_profile(f, threads=a.threads, runs=20).ms for k, f in files.items()}).fillna(0)
    ops.loc['TOTAL'] = ops.sum()
    print(ops.loc[ops.max(axis=1).sort_values(ascending=False).index].head(14).round(2).to_string())   # every file's largest ops


if __name__ == '__main__': main()
