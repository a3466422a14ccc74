"""What the neck's Concat and Resize cost in onnxruntime's integer graph, and whether a rewrite makes them cheaper (issue 16).

The INT8 file is the project's PTQ export of the given FP32 model at --imgsz (or --int8 FILE). In it every C2f/SPPF
Concat already has one scale for all its inputs and its output (`QConcat` shares the quantizer), and each upsample
runs on uint8 (DQ → Resize → Q with one scale). What is left:

  per node        kernel time of every Concat / Resize, with whether its inputs' scales equal its output's
  resize          onnxruntime places the Resize between channels-last integer convolutions, so it runs on NHWC, where
                  its CPU kernel has no 2x fast path (a per-element index loop); timed alone on both layouts
  int8_expand     each Resize as Reshape → Expand → Reshape (the same outputs bit for bit, checked)
  int8_d2s        each Resize as Concat of 4 copies → DepthToSpace (the same outputs bit for bit, checked)
  int8_shared     the neck Concats' requantized inputs given the output's scale (timing only: the outputs change)

    python bench/speed_neck.py --data DATA/data.yaml --threads 1 --runs 30
"""
import argparse, json, shutil, tempfile
from collections import defaultdict
from pathlib import Path
import numpy as np, pandas as pd
from kltn_qat.deployment.export import export_onnx, make_session, load_onnx, ort_session_options
from kltn_qat.deployment.benchmark import benchmark, print_benchmark, op_profile, machine_info
from speed_silu import _graph   # bench/ is on the path when run as `python bench/speed_neck.py`


def _scale(g, name):
    from onnx import numpy_helper
    t = next((t for t in g.initializer if t.name == name), None)
    return None if t is None else float(numpy_helper.to_array(t))


def neck_nodes(path)->pd.DataFrame:
    "Every integer Concat / Resize: input scales, output scale, whether onnxruntime must requantize an input."
    m, g, cons, prod = _graph(path)
    rows = []
    for n in g.node:
        if n.op_type not in ('Concat', 'Resize'): continue
        ins = [prod.get(i) for i in n.input[:len(n.input) if n.op_type == 'Concat' else 1]]
        outs = cons.get(n.output[0], [])
        if not all(p is not None and p.op_type == 'DequantizeLinear' for p in ins) or not outs or outs[0].op_type != 'QuantizeLinear': continue
        s_in = [_scale(g, p.input[1]) for p in ins]; s_out = _scale(g, outs[0].input[1])
        rows.append(dict(node=n.name, op=n.op_type, inputs=len(ins), in_scales=[round(s, 5) for s in s_in], out_scale=round(s_out, 5),
                         requantized=sum(s != s_out for s in s_in)))
    return pd.DataFrame(rows)


def node_profile(path, threads:int=1, runs:int=20)->pd.Series:
    "Median kernel time (ms) of each node in onnxruntime (names after its graph optimizations)."
    import onnxruntime as ort
    so = ort_session_options(load_onnx(path), threads, spin=False)
    d = Path(tempfile.mkdtemp()); so.enable_profiling = True; so.profile_file_prefix = str(d / 'ort')
    try:
        s = ort.InferenceSession(str(path), so, providers=['CPUExecutionProvider'])
        x = np.random.default_rng(0).random([int(v) for v in s.get_inputs()[0].shape], dtype=np.float32)
        for _ in range(runs + 3): s.run(None, {s.get_inputs()[0].name: x})
        events = json.loads(Path(s.end_profiling()).read_text())
    finally: shutil.rmtree(d, ignore_errors=True)
    t = defaultdict(list)
    for e in events:
        if e.get('cat') == 'Node' and e.get('name', '').endswith('_kernel_time'): t[(e['name'][:-len('_kernel_time')], e['args']['op_name'])].append(e['dur'])
    return pd.Series({k: np.median(v[3:]) / 1000 for k, v in t.items()})


def _rewrite(src, dst, fn):
    import onnx
    m, g, cons, prod = _graph(src)
    nodes = []
    for n in g.node: nodes += fn(g, n, cons, prod) or [n]
    del g.node[:]; g.node.extend(nodes)
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in used]; del g.initializer[:]; g.initializer.extend(keep)
    onnx.checker.check_model(m); onnx.save(m, dst); return dst


def _resize_shape(path):
    "Input shape of every Resize, from one run of the graph with those tensors as outputs."
    import onnx
    m = onnx.load(path); names = [n.input[0] for n in m.graph.node if n.op_type == 'Resize']
    m.graph.output.extend([onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in names])
    import onnxruntime as ort
    s = ort.InferenceSession(m.SerializeToString(), providers=['CPUExecutionProvider'])
    x = np.zeros([int(v) for v in s.get_inputs()[0].shape], np.float32)
    return dict(zip(names, [o.shape for o in s.run(names, {s.get_inputs()[0].name: x})]))


def resize_expand(src, dst):
    "Each 2x nearest Resize as Reshape [N,C,H,1,W,1] → Expand [N,C,H,2,W,2] → Reshape [N,C,2H,2W]."
    from onnx import helper, numpy_helper
    shapes = _resize_shape(src)
    def fn(g, n, cons, prod):
        if n.op_type != 'Resize': return None
        N, C, H, W = shapes[n.input[0]]; p = n.name
        g.initializer.extend([numpy_helper.from_array(np.array(s, np.int64), f'{p}_s{i}') for i, s in
                              enumerate(([N, C, H, 1, W, 1], [N, C, H, 2, W, 2], [N, C, 2 * H, 2 * W]))])
        return [helper.make_node('Reshape', [n.input[0], f'{p}_s0'], [f'{p}_a'], name=f'{p}_r0'),
                helper.make_node('Expand', [f'{p}_a', f'{p}_s1'], [f'{p}_b'], name=f'{p}_expand'),
                helper.make_node('Reshape', [f'{p}_b', f'{p}_s2'], [n.output[0]], name=f'{p}_r1')]
    return _rewrite(src, dst, fn)


def resize_d2s(src, dst):
    "Each 2x nearest Resize as Concat of four copies on channels → DepthToSpace(2, DCR)."
    from onnx import helper
    def fn(g, n, cons, prod):
        if n.op_type != 'Resize': return None
        return [helper.make_node('Concat', [n.input[0]] * 4, [n.name + '_x4'], axis=1, name=n.name + '_x4'),
                helper.make_node('DepthToSpace', [n.name + '_x4'], [n.output[0]], blocksize=2, mode='DCR', name=n.name + '_d2s')]
    return _rewrite(src, dst, fn)


def concat_shared(src, dst):
    "Every integer Concat's input dequantizers given its output's scale and zero point (timing only)."
    from onnx import helper
    def fn(g, n, cons, prod):
        if n.op_type != 'Concat': return None
        outs = cons.get(n.output[0], [])
        if not outs or outs[0].op_type != 'QuantizeLinear': return None
        for i in n.input:
            p = prod.get(i)
            if p is not None and p.op_type == 'DequantizeLinear': p.input[1:3] = outs[0].input[1:3]
        return None
    return _rewrite(src, dst, fn)


def resize_alone(shapes:list, runs:int=300)->pd.DataFrame:
    "One uint8 2x nearest Resize timed alone in onnxruntime, channels-first and channels-last (one thread)."
    import time, onnxruntime as ort
    from onnx import helper, numpy_helper, TensorProto
    def sess(shape, scales):
        g = helper.make_graph([helper.make_node('Resize', ['x', '', 's'], ['y'], mode='nearest', coordinate_transformation_mode='asymmetric', nearest_mode='floor')],
                              'r', [helper.make_tensor_value_info('x', TensorProto.UINT8, shape)], [helper.make_tensor_value_info('y', TensorProto.UINT8, None)],
                              [numpy_helper.from_array(np.array(scales, np.float32), 's')])
        so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.add_session_config_entry('session.intra_op.allow_spinning', '0')
        return ort.InferenceSession(helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)], ir_version=8).SerializeToString(), so, providers=['CPUExecutionProvider'])
    def ms(s, x):
        for _ in range(20): s.run(None, {'x': x})
        t = []
        for _ in range(runs): t0 = time.perf_counter(); s.run(None, {'x': x}); t.append(time.perf_counter() - t0)
        return np.median(t) * 1000
    rows = []
    for N, C, H, W in shapes:
        x = np.random.default_rng(0).integers(0, 256, (N, C, H, W), dtype=np.uint8)
        rows.append(dict(shape=f'{C}x{H}x{W}', nchw_ms=ms(sess([N, C, H, W], [1, 1, 2, 2]), x),
                         nhwc_ms=ms(sess([N, H, W, C], [1, 2, 2, 1]), np.ascontiguousarray(x.transpose(0, 2, 3, 1)))))
    return pd.DataFrame(rows).round(3)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--weights', default='bench/models/quick_converged_yolov8n.pt'); ap.add_argument('--data')
    ap.add_argument('--int8', help='an INT8 .onnx to study instead of calibrating --weights')
    ap.add_argument('--out', default='/tmp/speed_neck'); ap.add_argument('--imgsz', type=int, default=640)
    ap.add_argument('--threads', type=int, default=1); ap.add_argument('--runs', type=int, default=30)
    a = ap.parse_args()
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    if a.int8: int8 = Path(a.int8)
    else:
        if not a.data: ap.error('--data is needed to calibrate --weights (or give --int8 FILE)')
        from kltn_qat.models.yolov8_qat import load_fp32, prepare_qat
        from kltn_qat.quantization.calibration import calibrate
        q = calibrate(prepare_qat(load_fp32(a.weights), 'w8a8'), a.data, n_batches=8, imgsz=a.imgsz, batch=4, progress=False)
        int8 = export_onnx(q, out/'int8.onnx', imgsz=a.imgsz)
    print(machine_info())
    files = {'int8': int8, 'int8_expand': resize_expand(int8, out/'int8_expand.onnx'),
             'int8_d2s': resize_d2s(int8, out/'int8_d2s.onnx'), 'int8_shared': concat_shared(int8, out/'int8_shared.onnx')}
    nodes = neck_nodes(int8)
    kinds = np.where(nodes.op == 'Concat', 'QLinearConcat', 'Resize')
    for name in ('int8', 'int8_shared'):   # one after the other: the per-node figures move with the load, the totals below do not
        prof = node_profile(files[name], a.threads)
        nodes[f'ms_{name}'] = [prof.get((n, o), np.nan) for n, o in zip(nodes.node, kinds)]
        print(f"{name}: total kernel time {prof.sum():.2f} ms; these nodes {nodes[f'ms_{name}'].sum():.2f} ms, "
              f"the requantizing Concats {nodes[f'ms_{name}'][nodes.requantized > 0].sum():.2f} ms")
    print(nodes.round(3).to_string())
    print(resize_alone(list(_resize_shape(int8).values())).to_string())
    x = np.random.default_rng(0).random((1, 3, a.imgsz, a.imgsz), dtype=np.float32)
    run = lambda f: make_session(f, 1).run(None, {'images': x})[0]
    ref = run(int8)
    print({k: float(np.abs(run(f) - ref).max()) for k, f in files.items() if k != 'int8'}, '(largest output difference; int8_shared changes outputs by design)')
    print_benchmark(benchmark(list(files.items()), threads=a.threads, runs=a.runs, memory=False))
    ops = pd.DataFrame({k: op_profile(f, threads=a.threads, runs=20).ms for k, f in files.items()}).fillna(0)
    ops.loc['TOTAL'] = ops.sum()
    print(ops.sort_values('int8', ascending=False).head(12).round(2).to_string())


if __name__ == '__main__': main()
