"""The package's import graph: no cycle, and no import from a lower layer up to a higher one.

Every module of `kltn_qat/` is parsed with `ast` (nothing is imported or run). Each `import kltn_qat...`,
`from kltn_qat... import ...` and relative import is an edge, wherever it is written: at module level or
inside a function (the lazy imports of the CLI and the pipeline count as much as the others). The CLI also
imports its commands' functions by dotted string (`@command('calibrate', 'kltn_qat.models.ptq.calibrate_checkpoint')`):
those strings are edges too, and each must name a function that exists.
"""
import ast, re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / 'kltn_qat'

# Lower layers never import higher ones; modules of one layer may import each other, without a cycle.
# A module's layer is that of its longest dotted prefix listed here; every module must have one.
LAYERS = {
    'kltn_qat': 0, 'kltn_qat.core': 0,      # version, errors, files, devices, seeds
    'kltn_qat.data': 1,                     # datasets, and the one way to list, read and letterbox images
    'kltn_qat.quantization': 2,             # schemes → observers → fake quantizers (+ switches) → qconfig → fusion → QAT modules → calibration
    'kltn_qat.models': 3,                   # YOLOv8 prepared for QAT, its checkpoint, PTQ of a checkpoint
    'kltn_qat.config': 3,                   # the study config: validates its qconfig section with quantization.qconfig
    'kltn_qat.deployment': 4,               # the ONNX file (export: written, read back, opened in onnxruntime), its detector
                                            # (inference), its latency and size (benchmark), other runtimes (openvino)
    'kltn_qat.training': 5,                 # FP32 and QAT training
    'kltn_qat.evaluation': 5,               # mAP of any model kind (.pt, kltn_qat checkpoint, ONNX through export)
    'kltn_qat.analysis': 5,                 # per-layer error and sensitivity (uses evaluation)
    'kltn_qat.deployment.predict': 6,       # boxes from any model kind (`evaluation.model_kind`)
    'kltn_qat.pipeline': 7,                 # every stage, end to end
    'kltn_qat.study': 8,                    # several pipelines
    'kltn_qat.cli': 9, 'kltn_qat.docs': 9,  # the command line and the doc site
}

# ---------------------------------------------------------------- the checker (pure functions)

def module_name(path:Path, root:Path)->tuple[str, bool]:
    "Dotted name of the module at `path` under the package folder `root`, and whether it is a package's `__init__`."
    parts = path.relative_to(root.parent).with_suffix('').parts
    return ('.'.join(parts[:-1]), True) if parts[-1] == '__init__' else ('.'.join(parts), False)

DOTTED = re.compile(r'kltn_qat(?:\.\w+){2,}')   # 'kltn_qat.module.name' (not 'kltn_qat.css', a file name)

def imports_of(name:str, is_pkg:bool, source:str, modules:set[str], pkg:str='kltn_qat')->dict[str, int]:
    "The package modules `source` imports (module level or not, absolute, relative or by dotted string), each with the line of its first import."
    out = {}
    def add(target, line):
        while target and target not in modules: target = target.rpartition('.')[0]   # `kltn_qat.x.f` → module `kltn_qat.x`
        if target and target != name: out.setdefault(target, line)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == pkg or a.name.startswith(pkg + '.'): add(a.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split('.') if is_pkg else name.split('.')[:-1]
                base = base[:len(base) - (node.level - 1)]
                mod = '.'.join(base + ([node.module] if node.module else []))
            else: mod = node.module or ''
            if not (mod == pkg or mod.startswith(pkg + '.')): continue
            for a in node.names:   # `from kltn_qat.models import ptq` imports the module `ptq`
                add(f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod, node.lineno)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and DOTTED.fullmatch(node.value):
            add(node.value, node.lineno)
    return out

def layer_of(module:str, layers:dict[str, int])->int|None:
    "The layer of `module`: that of its longest prefix in `layers` (None when it has none)."
    parts = module.split('.')
    for k in range(len(parts), 0, -1):
        if '.'.join(parts[:k]) in layers: return layers['.'.join(parts[:k])]
    return None

def cycles(graph:dict[str, dict])->list[list[str]]:
    "The import cycles of `graph` (module → modules it imports): its strongly connected components with more than one module (Tarjan)."
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]
    def visit(v):
        index[v] = low[v] = n[0]; n[0] += 1; stack.append(v); on.add(v)
        for w in graph.get(v, ()):
            if w not in index: visit(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v: break
            if len(comp) > 1: out.append(sorted(comp))
    for v in sorted(graph):
        if v not in index: visit(v)
    return out

def upward(graph:dict[str, dict], layers:dict[str, int])->list[str]:
    "Every import from a lower layer up to a higher one, as 'a (layer) → b (layer)'."
    return [f"{a} ({layer_of(a, layers)}) imports {b} ({layer_of(b, layers)})"
            for a in sorted(graph) for b in sorted(graph[a]) if layer_of(a, layers) < layer_of(b, layers)]

SKIP = {'_modidx.py'}   # nbdev's generated symbol index: data (a string for every symbol), not code

def package_graph(root:Path=PKG)->dict[str, dict[str, int]]:
    "module → {imported module: line} for every module of the package at `root`."
    files = {module_name(p, root): p for p in sorted(root.rglob('*.py')) if p.name not in SKIP}
    modules = {m for m, _ in files}
    return {m: imports_of(m, is_pkg, p.read_text(), modules) for (m, is_pkg), p in files.items()}

# ---------------------------------------------------------------- the package

@pytest.fixture(scope='module')
def graph(): return package_graph()

def test_every_module_has_a_layer(graph):
    assert [m for m in graph if layer_of(m, LAYERS) is None] == [], "give each new module a layer in LAYERS"
    assert len(graph) > 20 and any(graph.values())   # the walk found the package and its imports

def test_no_import_cycle(graph):
    assert cycles(graph) == []

def test_no_import_from_a_lower_layer_up(graph):
    assert upward(graph, LAYERS) == []

def test_quantization_knows_no_model():
    "Calibration (and every quantizer) works on any prepared network: nothing under quantization/ imports models/ or above."
    g = package_graph()
    assert {b for a, bs in g.items() if a.startswith('kltn_qat.quantization') for b in bs
            if layer_of(b, LAYERS) > LAYERS['kltn_qat.quantization']} == set()

def test_export_does_not_need_inference(graph):
    "Chapter 50 (export) comes before chapter 51 (inference): the export module imports nothing from it."
    assert 'kltn_qat.deployment.inference' not in graph['kltn_qat.deployment.export']

def test_dotted_string_targets_exist():
    "Each 'kltn_qat.module.function' string (the CLI's command targets) names a function or class its module defines."
    files = {module_name(p, PKG)[0]: p for p in PKG.rglob('*.py') if p.name not in SKIP}
    found = 0
    for p in files.values():
        for node in ast.walk(ast.parse(p.read_text())):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str) and DOTTED.fullmatch(node.value)): continue
            mod, _, attr = node.value.rpartition('.')
            if node.value in files: continue                   # a module
            assert mod in files, f"{p.name}:{node.lineno}: '{node.value}': no module {mod}"
            defined = {n.name for n in ast.parse(files[mod].read_text()).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
            assert attr in defined, f"{p.name}:{node.lineno}: '{node.value}': {mod} defines no {attr}"
            found += 1
    assert found > 10   # the CLI's commands

# ---------------------------------------------------------------- the checker can fail

def test_checker_finds_a_cycle_and_an_upward_import():
    layers = {'p': 0, 'p.low': 0, 'p.mid': 1, 'p.high': 2}
    g = {'p': {}, 'p.low': {'p.mid': 3}, 'p.mid': {'p.high': 1, 'p.low': 2}, 'p.high': {'p.mid': 5}}
    assert cycles(g) == [['p.high', 'p.low', 'p.mid']]
    assert upward(g, layers) == ['p.low (0) imports p.mid (1)', 'p.mid (1) imports p.high (2)']
    assert cycles({'a': {'b': 1}, 'b': {'c': 1}, 'c': {}}) == [] and upward({'p.high': {'p.low': 1}}, layers) == []
    assert layer_of('p.mid.sub', layers) == 1 and layer_of('q', layers) is None

def test_checker_sees_every_kind_of_import():
    src = ("from ..core import KltnError\n"                      # relative, module level
           "import os\n"                                          # not the package: ignored
           "def f():\n"
           "    from kltn_qat.models.ptq import head_error\n"     # function level
           "    import kltn_qat.training as T\n"
           "    from .. import __version__\n"                     # the package itself
           "    from kltn_qat.models import ptq\n"                # a module imported by name (already counted)
           "CMD = 'kltn_qat.evaluation.evaluate'\n")              # a dotted-string target
    mods = {'kltn_qat', 'kltn_qat.core', 'kltn_qat.models', 'kltn_qat.models.ptq', 'kltn_qat.training', 'kltn_qat.evaluation',
            'kltn_qat.deployment', 'kltn_qat.deployment.export', 'kltn_qat.deployment.inference'}
    assert imports_of('kltn_qat.deployment.export', False, src, mods) == {
        'kltn_qat.core': 1, 'kltn_qat.models.ptq': 4, 'kltn_qat.training': 5, 'kltn_qat': 6, 'kltn_qat.evaluation': 8}
    assert imports_of('kltn_qat.deployment', True, 'from .export import x\n', mods) == {'kltn_qat.deployment.export': 1}   # in an __init__
    assert imports_of('kltn_qat.deployment.export', False, 'from .inference import x\n', mods) == {'kltn_qat.deployment.inference': 1}
