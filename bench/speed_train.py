"""QAT training step against FP32, before and after the vectorized per-tensor fake-quant kernel (issue 16), in one run.

The rows are timed interleaved, one step of each model per round, as `kltn-qat benchmark-train` does, with the wall time
and the process CPU time of each step (the CPU time is the figure least disturbed by other jobs on a shared machine;
with --threads 1 it does not count threads waiting for each other either):
  fp32                      the FP32 model
  qat_torch_kernel          QAT, observers frozen, PyTorch's per-tensor fake-quant kernel (as before issue 16)
  qat_bool_backward         QAT, observers frozen, the vectorized kernel with its first backward (`grad * bool_mask`)
  qat                       QAT, observers frozen, `fake_quantize_per_tensor` as it is now (backward: `grad * mask` as bytes)
  qat_observers_on          QAT before the observer freeze (ranges updated every step)
  fp32_bn_frozen            the FP32 model with its BN layers on running statistics: the like-for-like reference of the next row
  qat_default_recipe        QAT as `train_qat` runs it with the default config (qat.freeze_bn_epoch 0, freeze_observer_epoch 0):
                            BN and observers frozen, each layer one convolution with the folded, quantized weight
The first four keep BN on batch statistics (the layer divides the BN factor back out and normalizes), as FP32 training does.
--rows picks some of them (the first one given is the reference of the ratios).
With --profile, torch.profiler's table of fp32, qat_torch_kernel, qat and qat_default_recipe (one step each) follows.
With --chain, the first layer's quantized SiLU (its three quantizers, sigmoid and product, as the default recipe trains
it) is timed alone against its float SiLU, forward and backward, on the activation of --batch images at --imgsz:
at 640 px, batch 8, a 50 MB tensor, above the size from which glibc's malloc maps fresh pages for every allocation.
Run it also with MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 in the environment (glibc then keeps large
tensors on its heap instead of mapping fresh pages for each) to see what those page faults cost, and the steps the same way.

    python bench/speed_train.py --weights bench/models/quick_converged_yolov8n.pt --imgsz 640 --batch 8 --steps 3
"""
import argparse, copy, json, os, platform, statistics, time, types
import pandas as pd
import torch
from torch.profiler import profile, ProfilerActivity
from kltn_qat.models.yolov8_qat import load_fp32, prepare_qat
from kltn_qat.quantization.fake_quantize import set_quant_state
from kltn_qat.quantization.fake_quantize import observing, quantizers, _FakeQuantPerTensor
from kltn_qat.quantization.qat_modules import freeze_bn
from kltn_qat.evaluation import _prep_train, _dummy_batch


class _BoolBackward(_FakeQuantPerTensor):
    "The vectorized kernel with the backward it had first: the bool mask multiplied in (PyTorch converts it to float)."
    @staticmethod
    def backward(ctx, grad):
        mask, = ctx.saved_tensors
        return grad * mask, None, None, None, None


def with_per_tensor(fn):
    "A `FakeQuantize._fake_quant` whose per-tensor case runs `fn` (per-channel weights keep PyTorch's kernel, as in the library)."
    def fake_quant(self, x):
        s = self.scheme
        if s.per_channel:
            return torch.fake_quantize_per_channel_affine(x, self.scale, self.zero_point, s.ch_axis % x.ndim, s.qmin, s.qmax)
        return fn(x, self.scale, self.zero_point, s.qmin, s.qmax)
    return fake_quant

native_fake_quant = with_per_tensor(torch.fake_quantize_per_tensor_affine)   # as before issue 16: PyTorch's own kernels
bool_backward_fake_quant = with_per_tensor(_BoolBackward.apply)


def cpu_flags():
    "The SIMD flags the timings depend on."
    try: flags = next(l for l in open('/proc/cpuinfo') if l.startswith('flags')).split()
    except (OSError, StopIteration): return []
    return [f for f in ('avx2', 'avx512f', 'avx512_vnni', 'avx512_bf16', 'amx_int8') if f in flags]


def train_steps(models:dict, imgsz:int, batch:int, steps:int, warmup:int, bn_eval:tuple=())->pd.DataFrame:
    "Wall and CPU time of one training step (forward + loss + backward + SGD) per model, interleaved; ratios to the first."
    dev = torch.device('cpu')
    ms = {k: _prep_train(m, dev) for k, m in models.items()}
    for k in bn_eval:   # float BN layers on running statistics: the FP32 counterpart of a BN freeze
        for mod in ms[k].modules():
            if isinstance(mod, torch.nn.BatchNorm2d): mod.eval()
    b = _dummy_batch(batch, imgsz, int(next(iter(ms.values())).model[-1].nc), dev)
    opts = {k: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-5) for k, m in ms.items()}
    wall, cpu = {k: [] for k in ms}, {k: [] for k in ms}
    for i in range(warmup + steps):
        for k in (list(ms) if i % 2 == 0 else list(ms)[::-1]):
            t, c = time.perf_counter(), time.process_time()
            opts[k].zero_grad(); loss, _ = ms[k].loss(b); loss.sum().backward(); opts[k].step()
            if i >= warmup: wall[k].append(1e3 * (time.perf_counter() - t)); cpu[k].append(1e3 * (time.process_time() - c))
    ref = next(iter(ms))
    rows = [{'model': k, 'step_ms': statistics.median(wall[k]), 'min_ms': min(wall[k]), 'cpu_ms': statistics.median(cpu[k])} for k in ms]
    df = pd.DataFrame(rows).set_index('model')
    df['ratio'], df['cpu_ratio'] = df.step_ms / df.step_ms[ref], df.cpu_ms / df.cpu_ms[ref]
    return df


def chain_times(model, imgsz:int, batch:int, runs:int=5)->pd.DataFrame:
    "Median ms of the first layer's quantized SiLU (fq_pre, sigmoid, fq_sig, product, fq_out) and of a float SiLU, forward and backward."
    stem = model.model[0]; was = stem.training; stem.train()
    y0 = torch.randn(batch, stem.conv.out_channels, imgsz // 2, imgsz // 2) * 3; g = torch.randn_like(y0) * 1e-3
    def quantized(y): p = stem.fq_pre(y); return stem.fq_out(p * stem.fq_sig(torch.sigmoid(p)))
    rows = {}
    for name, f in (('quantized SiLU', quantized), ('float SiLU', torch.nn.functional.silu)):
        fw, bw = [], []
        for _ in range(runs + 1):
            y = y0.clone().requires_grad_(); t = time.perf_counter(); out = f(y); t1 = time.perf_counter(); out.backward(g)
            fw.append(1e3 * (t1 - t)); bw.append(1e3 * (time.perf_counter() - t1))
        rows[name] = {'forward_ms': statistics.median(fw[1:]), 'backward_ms': statistics.median(bw[1:])}
    stem.train(was)
    print(f"first layer's activation: {list(y0.shape)}, {y0.numel() * 4 / 2**20:.0f} MiB; "
          f"MALLOC_MMAP_MAX_={os.environ.get('MALLOC_MMAP_MAX_', 'unset')}, MALLOC_TRIM_THRESHOLD_={os.environ.get('MALLOC_TRIM_THRESHOLD_', 'unset')}")
    return pd.DataFrame(rows).T


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--weights', default='bench/models/quick_converged_yolov8n.pt'); ap.add_argument('--qconfig', default='w8a8')
    ap.add_argument('--imgsz', type=int, default=640); ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--steps', type=int, default=3); ap.add_argument('--warmup', type=int, default=1)
    ap.add_argument('--threads', type=int, default=None, help='torch threads (default: torch\'s own)')
    ap.add_argument('--profile', action='store_true'); ap.add_argument('--json', default=None)
    ap.add_argument('--rows', nargs='+', default=None, help='time only these rows (the first is the reference)')
    ap.add_argument('--chain', action='store_true', help="time the first layer's quantized SiLU alone against its float SiLU")
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    fp32 = load_fp32(a.weights)
    qat_on = prepare_qat(fp32, a.qconfig); set_quant_state(qat_on, observers=True, fake_quant=True)
    frozen = copy.deepcopy(qat_on).eval()
    with torch.no_grad(), observing(frozen): frozen(torch.rand(2, 3, a.imgsz, a.imgsz))
    set_quant_state(frozen, observers=False)
    native = copy.deepcopy(frozen)
    for _, fq in quantizers(native): fq._fake_quant = types.MethodType(native_fake_quant, fq)
    boolb = copy.deepcopy(frozen)
    for _, fq in quantizers(boolb): fq._fake_quant = types.MethodType(bool_backward_fake_quant, fq)
    recipe = copy.deepcopy(frozen); freeze_bn(recipe, True)
    models = {'fp32': fp32, 'qat_torch_kernel': native, 'qat_bool_backward': boolb, 'qat': frozen, 'qat_observers_on': qat_on,
              'fp32_bn_frozen': fp32, 'qat_default_recipe': recipe}
    if a.chain: print(chain_times(recipe, a.imgsz, a.batch).to_string(float_format=lambda v: f"{v:.1f}"))
    if a.rows:
        unknown = [r for r in a.rows if r not in models]
        if unknown: ap.error(f"unknown rows {unknown}: choose from {list(models)}")
        models = {r: models[r] for r in a.rows}
    info0 = os.getloadavg()[0]
    df = train_steps(models, a.imgsz, a.batch, a.steps, a.warmup, bn_eval=tuple(k for k in ('fp32_bn_frozen',) if k in models))
    info = {'cpu': platform.processor() or next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), '?'),
            'cpu_flags': cpu_flags(), 'cores': os.cpu_count(), 'torch_threads': torch.get_num_threads(), 'torch': torch.__version__,
            'imgsz': a.imgsz, 'batch': a.batch, 'steps': a.steps, 'loadavg': [info0, os.getloadavg()[0]],
            'malloc_env': {k: os.environ[k] for k in ('MALLOC_MMAP_MAX_', 'MALLOC_TRIM_THRESHOLD_') if k in os.environ}}
    print(info); print(df.to_string(float_format=lambda v: f"{v:.2f}"))
    if a.json: open(a.json, 'w').write(json.dumps({'settings': info, 'rows': df.reset_index().to_dict(orient='records')}, indent=1))
    if a.profile:
        b = _dummy_batch(a.batch, a.imgsz, int(fp32.model[-1].nc), torch.device('cpu'))
        for name in ('fp32', 'qat_torch_kernel', 'qat', 'qat_default_recipe'):
            m = _prep_train(models[name], torch.device('cpu'))
            opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-5)
            def step(): opt.zero_grad(); loss, _ = m.loss(b); loss.sum().backward(); opt.step()
            step()
            with profile(activities=[ProfilerActivity.CPU]) as p: step()
            print(f"\n{name}: torch.profiler, one step"); print(p.key_averages().table(sort_by='self_cpu_time_total', row_limit=14, max_name_column_width=60))


if __name__ == '__main__': main()
