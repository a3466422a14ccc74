"""The experiment matrix: every shipped config and every feature a config can switch on runs end to end at smoke scale
(8 synthetic images, 64 px, one shared FP32 model, 1 QAT epoch) through `run_pipeline`, and the model it produces is
the one the config describes: bits, schemes and observers per layer, integer convolutions in onnxruntime's optimized
graph, the image size and the QAT learning rate. Then each CLI stage alone, from a model trained at one size and used
at another."""
import json, os, shutil, subprocess, sys, time
from pathlib import Path
import pytest, torch, yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / 'configs'
EXE = shutil.which('kltn-qat', path=str(Path(sys.executable).parent)) or shutil.which('kltn-qat')
ENV = dict(os.environ, YOLO_OFFLINE='1', YOLO_AUTOINSTALL='false', YOLO_VERBOSE='false', MPLBACKEND='Agg')
IMGSZ = 64                                  # what every case asks for ...
FP32_ARGS = {'imgsz': 96, 'optimizer': 'AdamW', 'lr0': 3e-3, 'lrf': 0.05, 'epochs': 1}   # ... from a model trained at 96 px
DERIVED_LR = FP32_ARGS['lr0'] * FP32_ARGS['lrf']   # 1.5e-4: the FP32 run's final rate (not the 1e-5 default)
QUICK_LR = 2e-4                                    # configs/quick.yaml's qat.lr, inherited by exp1-4

PROGRESSIVE = [{'epoch': 0, 'enable': ['weights']}, {'epoch': 1, 'enable': ['activations']}]

def _stem(layer): return layer == 'model.0'
def _head(layer): return layer.startswith('model.22.')

# case -> (config file, overrides, expectation). Expectation: weight type per layer (a function of the layer name),
# weight scheme, activation type, observers (kind, LSQ), least integer convs in onnxruntime (of 63), QAT lr.
W8 = W16 = 'symmetric per-channel'   # the weight scheme of every preset but asymmetric
CASES = {
    'quick':       ('quick.yaml', {}, dict(w=lambda l: 'int16' if _stem(l) else 'int8', w_scheme=W8, a='uint8', qlinear=55, lr=QUICK_LR)),
    'full':        ('full.yaml', {}, dict(w=lambda l: 'int16' if _stem(l) else 'int8', w_scheme=W8, a='uint8', qlinear=55, lr=DERIVED_LR)),
    'exp1':        ('experiments/exp1_symmetric_quant.yaml', {},
                    dict(w=lambda l: 'int16' if _stem(l) else 'int8', w_scheme=W8, a='int8', qlinear=55, lr=QUICK_LR)),
    'exp2':        ('experiments/exp2_asymmetric_quant.yaml', {},
                    dict(w=lambda l: 'int16' if _stem(l) else 'int8', w_scheme='asymmetric per-channel', a='uint8', qlinear=55, lr=QUICK_LR)),
    'exp3':        ('experiments/exp3_mixed_precision.yaml', {},
                    dict(w=lambda l: 'int8' if _stem(l) or _head(l) else 'int4', w_scheme=W8, a='uint8', qlinear=19, lr=QUICK_LR)),
    'exp4':        ('experiments/exp4_w7a8.yaml', {},
                    dict(w=lambda l: 'int16' if _stem(l) else 'int7', w_scheme=W8, a='uint8', qlinear=55, lr=QUICK_LR)),
    'lsq':         ('quick.yaml', {'qconfig': {'preset': 'lsq'}},
                    dict(w=lambda l: 'int8', w_scheme=W8, a='uint8', lsq=True, qlinear=55, lr=QUICK_LR)),
    'progressive': ('quick.yaml', {'qat': {'epochs': 2, 'progressive': PROGRESSIVE}},
                    dict(w=lambda l: 'int16' if _stem(l) else 'int8', w_scheme=W8, a='uint8', qlinear=55, lr=QUICK_LR, epochs=2)),
    'distill':     ('quick.yaml', {'qat': {'distill_weight': 1.0}},
                    dict(w=lambda l: 'int16' if _stem(l) else 'int8', w_scheme=W8, a='uint8', qlinear=55, lr=QUICK_LR)),
    'relu':        ('relu.yaml', {},   # every SiLU swapped for ReLU: its own recipe (lr_factor 0.5 of the FP32 lr0)
                    dict(w=lambda l: 'int16' if _stem(l) else 'int8', w_scheme=W8, a='uint8', qlinear=55, lr=FP32_ARGS['lr0'] * 0.5)),
    'int16':       ('quick.yaml', {'qconfig': {'preset': 'int16'}},
                    dict(w=lambda l: 'int16', w_scheme=W16, a='uint16', qlinear=0, lr=QUICK_LR)),
}

def smoke_overrides(fp32:Path, data:Path, extra:dict)->dict:
    "The smoke scale, on top of a case's own overrides."
    from kltn_qat.config import deep_merge
    base = {'device': 'cpu', 'data': {'yaml': str(data)}, 'model': {'cfg': str(fp32), 'imgsz': IMGSZ}, 'fp32': {'skip': True},
            'qat': {'epochs': 1}, 'calibration': {'n_images': 4, 'batch': 4},
            'benchmark': {'runs': 2, 'warmup': 0, 'ort_peers': False}}
    return deep_merge(base, extra)

@pytest.fixture(scope='module')
def shared(tmp_path_factory):
    "One tiny dataset and ONE FP32 model for every case: an untrained YOLOv8n saved the way Ultralytics saves a best.pt."
    from ultralytics.nn.tasks import DetectionModel
    from kltn_qat.data import synth_dataset
    d = tmp_path_factory.mktemp('matrix')
    data = synth_dataset(d / 'ds', train=8, valid=4, test=4, seed=0)
    torch.manual_seed(0)
    fp32 = d / 'fp32.pt'
    torch.save({'model': DetectionModel('yolov8n.yaml', nc=7, verbose=False).half(), 'train_args': dict(FP32_ARGS)}, fp32)
    return {'d': d, 'data': data, 'fp32': fp32, 'runs': {}, 'times': {}}

def run_case(shared, name):
    "Run (once per module) the pipeline of case `name`; returns its run folder and metrics."
    if name not in shared['runs']:
        from kltn_qat.config import load_config
        from kltn_qat.pipeline import run_pipeline
        path, extra, _ = CASES[name]
        cfg = load_config(CONFIGS / path, smoke_overrides(shared['fp32'], shared['data'], extra))
        out = shared['d'] / name
        t = time.time()
        m = run_pipeline(cfg, out=out, log=lambda *a: None)
        shared['times'][name] = time.time() - t
        shared['runs'][name] = (out, m, cfg)
    return shared['runs'][name]

MATRIX = list(CASES)

@pytest.mark.parametrize('name', MATRIX)
def test_config_does_what_it_says(shared, name):
    from kltn_qat.models.yolov8_qat import load_checkpoint, layer_table, read_checkpoint
    from kltn_qat.quantization.fake_quantize import quantizers, LearnableFakeQuantize
    from kltn_qat.deployment.export import inspect_ort_graph
    from kltn_qat.training import explain
    import onnx
    out, m, cfg = run_case(shared, name)
    exp = CASES[name][2]

    # the model the INT8 ONNX was exported from holds the config's quantization, layer by layer
    model, info = load_checkpoint(out / 'qat' / 'weights' / 'qat_best.pt')
    t = layer_table(model)
    convs = t[t.type != 'Conv2d']   # the DFL conv is post-processing, float by design
    assert len(convs) == 63, len(convs)
    for r in convs.itertuples():
        assert r.weight == exp['w'](r.layer), (name, r.layer, r.weight)
        assert r.w_scheme == exp['w_scheme'], (name, r.layer, r.w_scheme)
        assert r.activation == exp['a'], (name, r.layer, r.activation)
        lsq = ' + LSQ' if exp.get('lsq') else ''
        assert r.w_observer == 'minmax' + lsq, (name, r.layer, r.w_observer)
        assert r.a_observer == 'moving_average' + lsq, (name, r.layer, r.a_observer)   # calibration's minmax did not stay
    qs = [fq for n, fq in quantizers(model) if type(fq).__name__ != 'FixedQuant']
    assert all(isinstance(fq, LearnableFakeQuantize) == bool(exp.get('lsq')) for fq in qs), name
    # the checkpoint records the config's qconfig as it was given, and the calibration method separately
    ck = read_checkpoint(out / 'ptq.pt')
    from kltn_qat.quantization.qconfig import QConfigMap
    assert ck['qconfig'] == QConfigMap.from_dict(cfg.qconfig).to_dict(), name
    assert ck['extra']['calibration']['method'] == cfg.calibration.method

    # `explain` (what the config promises before anything runs) agrees with the trained model
    cols = ['layer', 'weight', 'w_scheme', 'w_observer', 'activation', 'a_observer', 'export']
    promised = explain(cfg, log=None)['layers'][cols].reset_index(drop=True)
    assert promised.equals(t[cols].reset_index(drop=True)), (name, promised.compare(t[cols].reset_index(drop=True)))

    assert (out / 'explain.md').exists() and (out / 'qat' / 'layers.csv').exists()   # saved in the run folder

    # integer convolutions in onnxruntime's optimized graph where the runtime has them
    for f in ('qat_int8.onnx', 'ptq_int8.onnx'):
        g = inspect_ort_graph(out / 'onnx' / f)
        assert g['qlinear_conv'] >= exp['qlinear'], (name, f, g['qlinear_conv'], g['float_conv_names'][:10])

    # the image size asked for (64) everywhere, not the model's own 96
    assert m['imgsz'] == IMGSZ and info['imgsz'] == IMGSZ
    for f in ('fp32.onnx', 'qat_int8.onnx', 'ptq_int8.onnx'):
        dims = [d.dim_value for d in onnx.load(str(out / 'onnx' / f)).graph.input[0].type.tensor_type.shape.dim]
        assert dims[-2:] == [IMGSZ, IMGSZ], (name, f, dims)
    args = yaml.safe_load((out / 'qat' / 'args.yaml').read_text())
    assert args['imgsz'] == IMGSZ
    ev = json.loads((out / 'stages' / 'evaluate.json').read_text())['result']
    assert {r['imgsz'] for r in ev.values()} == {IMGSZ}, name

    # the QAT recipe: the learning rate the config (or the FP32 model) says, the optimizer of the FP32 run, the epochs
    assert args['lr0'] == pytest.approx(exp['lr'], rel=1e-9), (name, args['lr0'])
    assert args['optimizer'] == FP32_ARGS['optimizer']
    assert args['epochs'] == exp.get('epochs', 1)
    assert m['qat_selected'] in ['ptq'] + [f"qat_epoch_{i + 1}" for i in range(args['epochs'])]
    drift = (out / 'drift.csv').read_text()
    assert all(f"qat_epoch_{i + 1}," in drift for i in range(args['epochs'])), drift

@pytest.mark.parametrize('name', [n for n in CASES if n != 'lsq'])
def test_explain_says_what_runs_integer(shared, name):
    "The 'export' column of `explain` (integer / float) is what onnxruntime runs: as many integer convs as QLinearConv nodes."
    from kltn_qat.models.yolov8_qat import load_checkpoint, layer_table
    from kltn_qat.deployment.export import inspect_ort_graph
    out, _, _ = run_case(shared, name)
    t = layer_table(load_checkpoint(out / 'qat' / 'weights' / 'qat_best.pt')[0])
    g = inspect_ort_graph(out / 'onnx' / 'qat_int8.onnx')
    assert g['qlinear_conv'] == (t.export == 'integer').sum(), (name, g['qlinear_conv'], (t.export == 'integer').sum())

@pytest.mark.parametrize('name', ['progressive', 'distill'])
def test_training_feature_is_on(shared, name):
    "The QAT run recorded the feature and it changed training (against the same run without it)."
    from kltn_qat.models.yolov8_qat import read_checkpoint
    from kltn_qat.quantization.fake_quantize import quantizers
    out, _, _ = run_case(shared, name)
    last = read_checkpoint(out / 'qat' / 'weights' / 'qat_last.pt')
    q = last['extra']['qat']
    if name == 'progressive':
        assert q['progressive'] == PROGRESSIVE
        from kltn_qat.models.yolov8_qat import load_checkpoint
        model, _ = load_checkpoint(out / 'qat' / 'weights' / 'qat_last.pt')
        assert all(int(fq.fake_quant_enabled) for _, fq in quantizers(model))   # epoch 1 switched the activations on
    else:
        assert q['distill_weight'] == 1.0 and Path(last['extra']['teacher']) == shared['fp32']
    base, _, _ = run_case(shared, 'quick')
    ref = read_checkpoint(base / 'qat' / 'weights' / 'qat_last.pt')['state_dict']
    if name == 'progressive': ref = None   # two epochs against one: nothing to compare
    if ref is not None:
        sd = last['state_dict']
        assert any(not torch.equal(sd[k], ref[k]) for k in sd if k.endswith('conv.weight')), "distillation changed nothing"

def test_relu_network_is_what_ships(shared):
    "qat.activation relu: the QAT model and its INT8 ONNX are a ReLU network learning from the SiLU model; PTQ stays SiLU; the report says so."
    import onnx
    from kltn_qat.models.yolov8_qat import load_checkpoint, read_checkpoint
    from kltn_qat.quantization.qat_modules import QConvBnAct
    out, m, _ = run_case(shared, 'relu')
    model, info = load_checkpoint(out / 'qat' / 'weights' / 'qat_best.pt')
    assert {q.act for q in model.modules() if isinstance(q, QConvBnAct)} == {'relu'}
    assert {q.act for q in load_checkpoint(out / 'ptq.pt')[0].modules() if isinstance(q, QConvBnAct)} == {'silu'}
    last = read_checkpoint(out / 'qat' / 'weights' / 'qat_last.pt')['extra']
    assert last['qat']['activation'] == 'relu' and last['qat']['distill_weight'] == 1.0 and Path(last['teacher']) == shared['fp32']
    ops = lambda f: [n.op_type for n in onnx.load(str(out / 'onnx' / f)).graph.node]
    assert ops('qat_int8.onnx').count('Sigmoid') == 1 and ops('ptq_int8.onnx').count('Sigmoid') == 58   # the head's class scores only
    assert m['qat_activation'] == 'relu' and 'relu network' in (out / 'report.md').read_text()

def test_matrix_runtime(shared):
    "Keeps the lane honest: the times of the cases that ran (printed with -s)."
    print({k: round(v, 1) for k, v in shared['times'].items()})

# --- each CLI stage alone, from a model trained at 96 px and used at 64 px -------------------------------------------
def kq(*args, cwd=None):
    r = subprocess.run([EXE, *map(str, args)], env=ENV, capture_output=True, text=True, timeout=900, cwd=cwd)
    assert r.returncode == 0, (args[:2], r.stdout[-2000:], r.stderr[-3000:])
    return r

def onnx_size(p):
    import onnx
    return [d.dim_value for d in onnx.load(str(p)).graph.input[0].type.tensor_type.shape.dim][-2:]

def test_cli_stages_alone(shared, tmp_path):
    "Every stage as its own command, from an FP32 model trained at 96 px: each uses the size it is given, else the model's own."
    from kltn_qat.models.yolov8_qat import read_checkpoint, fp32_train_args
    data, wrong = shared['data'], []
    def check(ok, what):   # every stage runs; the mismatches are reported together
        if not ok: wrong.append(what)
    # train-fp32 at 96 px
    kq('train-fp32', '--data', data, '--model', 'yolov8n.yaml', '--imgsz', 96, '--epochs', 1, '--batch', 4,
       '--project', tmp_path, '--name', 'fp32', '--device', 'cpu')
    best = tmp_path / 'fp32' / 'weights' / 'best.pt'
    fa = fp32_train_args(best)
    assert fa['imgsz'] == 96, fa.get('imgsz')
    # calibrate without --imgsz: the model's own 96 px, the default policy, min-max while calibrating only
    r = kq('calibrate', '--data', data, '--weights', best, '--out', tmp_path / 'ptq.pt', '--n-images', 4, '--batch', 4, '--device', 'cpu')
    ck = read_checkpoint(tmp_path / 'ptq.pt')
    check(ck['imgsz'] == 96 and '96 px' in r.stdout + r.stderr, f"calibrate: checkpoint imgsz {ck['imgsz']}, not the model's own 96")
    ov = ck['qconfig']['overrides']
    check(ov and ov[0]['pattern'] == 'model.0' and ov[0]['weight']['bits'] == 16, f"calibrate: not the default policy: {ov}")
    check(ck['qconfig']['default']['activation']['observer'] == 'moving_average', "calibrate: stored activation observer rewritten")
    check(ck['extra']['calibration']['method'] == 'minmax', f"calibrate: method {ck['extra']['calibration']['method']}")
    # train-qat at 64 px: the FP32 run's optimizer and final learning rate
    kq('train-qat', '--data', data, '--weights', best, '--imgsz', 64, '--epochs', 1, '--batch', 4,
       '--project', tmp_path, '--name', 'qat', '--device', 'cpu')
    args = yaml.safe_load((tmp_path / 'qat' / 'args.yaml').read_text())
    check(args['imgsz'] == 64, f"train-qat --imgsz 64 trained at {args['imgsz']}")
    check(args['optimizer'] == fa['optimizer'], f"train-qat optimizer {args['optimizer']}, the FP32 run used {fa['optimizer']}")
    check(args['lr0'] == pytest.approx(fa['lr0'] * fa['lrf'], rel=1e-9), f"train-qat lr0 {args['lr0']}, not lr0 x lrf = {fa['lr0'] * fa['lrf']}")
    qbest = tmp_path / 'qat' / 'weights' / 'qat_best.pt'
    check(read_checkpoint(qbest)['imgsz'] == 64, "train-qat: qat_best.pt imgsz")
    # export: the checkpoint's own size by default; --imgsz wins; --fp32 the FP32 model's own size
    kq('export', '--weights', qbest, '--out', tmp_path / 'q.onnx', '--inspect')
    check(onnx_size(tmp_path / 'q.onnx') == [64, 64], f"export of a 64 px checkpoint: {onnx_size(tmp_path / 'q.onnx')}")
    kq('export', '--weights', tmp_path / 'ptq.pt', '--out', tmp_path / 'p64.onnx', '--imgsz', 64)
    check(onnx_size(tmp_path / 'p64.onnx') == [64, 64], f"export --imgsz 64 of a 96 px checkpoint: {onnx_size(tmp_path / 'p64.onnx')}")
    kq('export', '--fp32', '--weights', best, '--out', tmp_path / 'f.onnx')
    check(onnx_size(tmp_path / 'f.onnx') == [96, 96], f"export --fp32 of a 96 px best.pt: {onnx_size(tmp_path / 'f.onnx')}")
    # evaluate: an ONNX at its own size, the FP32 .pt at its own training size (a checkpoint: the pipeline cases)
    for w, size in ((tmp_path / 'q.onnx', 64), (best, 96)):
        kq('evaluate', '--data', data, '--weights', w, '--json', tmp_path / 'e.json', '--batch', 1)
        got = json.loads((tmp_path / 'e.json').read_text())['imgsz']
        check(got == size, f"evaluate {w.name}: at {got} px, not its own {size}")
    # analyze error / sensitivity
    kq('analyze', 'error', '--data', data, '--fp32', best, '--qat', qbest, '--out', tmp_path / 'err.csv', '--n-images', 4)
    check((tmp_path / 'err.csv').stat().st_size > 0, 'analyze error wrote an empty CSV')
    kq('analyze', 'sensitivity', '--data', data, '--weights', best, '--out', tmp_path / 'sens.yaml', '--n-images', 4,
       '--imgsz', 64, '--top-k', 2)
    s = yaml.safe_load((tmp_path / 'sens.yaml').read_text())
    ov = (s.get('qconfig') or s).get('overrides') or []
    check(len(ov) >= 2, f"analyze sensitivity --top-k 2 wrote {s}")
    # report of a pipeline run
    out, _, _ = run_case(shared, 'quick')
    r = kq('report', out / 'metrics.json')
    check('| qat_onnx_int8 |' in r.stdout, 'report printed no table')
    assert not wrong, wrong
