"""`nas export`: the chosen trial as a standalone PyTorch module.

The output folder holds:
- `model.py`: imports only torch (and the standard library); defines exactly the
  attention classes the architecture uses, the model class, and `build_model()`,
  with the ArchSpec as a literal;
- `weights.pt`: the state dict (from the trial's checkpoint, or `--retrain`);
- `arch.json`, `card.md`: the architecture and what was measured about it.

Safety: the code of `model.py` is copied from this package's own source files,
never from the database. The stored architecture JSON is parsed and validated as
an `ArchSpec` first (an attention kind must be a registered name, every knob an
integer), and the literal is written from the validated values with `repr` of
ints, bools and the registry's own name strings; a tampered study is refused.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import inspect
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import optuna
import torch

from nas.errors import NasError
from nas.results import best_feasible, is_feasible
from nas.search import TRAIN_ATTR, schedule_options
from nas.show import open_nas_study, resolve_study
from nas.storage import check_study_name, redact
from nas.tables import Tables
from search_spaces import ArchSpec, LayerSpec, SpecError, build_model
from search_spaces.arch_spec import KNOBS
from search_spaces.attention import base as attention_base
from search_spaces.attention.registry import REGISTRY
from search_spaces import model as model_module

# Modules whose imports may appear in model.py; anything else is a bug here.
ALLOWED_IMPORTS = {"__future__", "contextlib", "math", "typing", "dataclasses", "functools", "torch", "collections"}


# ---- choosing the trial --------------------------------------------------------
def pick_trial(study: optuna.Study, number: int | None) -> optuna.trial.FrozenTrial:
    if number is None:
        best = best_feasible(study)
        if best is None:
            raise NasError(f"study {study.study_name!r} has no feasible fully trained trial yet; run more trials, raise the budget, or pass --trial N")
        return best
    if isinstance(number, bool) or not isinstance(number, int):
        raise NasError(f"trial must be a trial number (an int), got {number!r}")
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        raise NasError(f"study {study.study_name!r} has no trial {number}; its trials are 0..{max(trials) if trials else -1}")
    return trials[number]


def trial_spec(trial: optuna.trial.FrozenTrial) -> ArchSpec:
    """The trial's architecture, validated; a tampered or missing one is refused."""
    text = trial.user_attrs.get("arch")
    if not isinstance(text, str):
        raise NasError(f"trial {trial.number} has no stored architecture (it failed before sampling one); pick another --trial")
    try:
        return ArchSpec.from_json(text)
    except (SpecError, TypeError) as e:
        raise NasError(f"trial {trial.number}'s stored architecture is invalid and will not be exported ({str(e).splitlines()[0]}); the database may have been altered") from None


# ---- code generation ------------------------------------------------------------
def _top_level(module) -> tuple[dict[str, ast.AST], list[str], str]:
    source = inspect.getsource(module)
    tree = ast.parse(source)
    defs: dict[str, ast.AST] = {}
    imports: list[str] = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mod = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            root = (mod or "").split(".")[0]
            if root in ALLOWED_IMPORTS:
                imports.append(ast.get_source_segment(source, node))
            elif root not in ("search_spaces",):
                raise RuntimeError(f"{module.__name__} imports {mod}, which model.py cannot carry")
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            defs[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name):
                    defs[t.id] = node
    return defs, imports, source


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
        n.value.id for n in ast.walk(node) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)}


def _literal(value: Any) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, (int, float)):
        return repr(value)
    raise TypeError(f"not a plain literal: {type(value).__name__}")


def spec_literal(spec: ArchSpec) -> str:
    """Python source of the spec, written from validated values only."""
    layers = []
    for layer in spec.layers:
        kind = next(k for k in REGISTRY if k == layer.attention)  # our own string object
        args = [f"attention={kind!r}", f"heads={_literal(layer.heads)}", f"ffn={_literal(layer.ffn)}"]
        args += [f"{k}={_literal(v)}" for k, v in layer.knobs().items()]
        args.append(f"seed={_literal(layer.seed)}")
        layers.append(f"        LayerSpec({', '.join(args)}),")
    head = next(h for h in ("token", "pooled") if h == spec.head)
    return "\n".join([
        "SPEC = ArchSpec(",
        f"    vocab_size={_literal(spec.vocab_size)}, max_seq_len={_literal(spec.max_seq_len)}, d_model={_literal(spec.d_model)},",
        f"    causal={_literal(spec.causal)}, head={head!r}, n_classes={_literal(spec.n_classes)}, dropout={_literal(float(spec.dropout))},",
        "    layers=(",
        *layers,
        "    ),",
        ")",
    ])


def _dataclass_source(cls: type, doc: str, extra: str = "") -> str:
    """A frozen dataclass with `cls`'s fields (names, annotations, defaults), written
    from the class itself so the export can never drift from it, without the
    validation (the spec was validated before export)."""
    lines = ["@dataclass(frozen=True)", f"class {cls.__name__}:", f'    """{doc}"""', ""]
    for fld in dataclasses.fields(cls):
        annotation = fld.type if isinstance(fld.type, str) else fld.type.__name__
        default = "" if fld.default is dataclasses.MISSING else f" = {fld.default!r}"
        lines.append(f"    {fld.name}: {annotation}{default}")
    return "\n".join(lines) + ("\n" + extra if extra else "")


def _spec_classes() -> str:
    knobs = (
        "\n    def knobs(self) -> dict:\n"
        f"        return {{k: getattr(self, k) for k in {tuple(KNOBS)!r}\n"
        "                if getattr(self, k) is not None}\n"
    )
    return "\n\n".join([
        _dataclass_source(LayerSpec, "One block's choices (validated by nas before export).", knobs),
        _dataclass_source(ArchSpec, "The architecture (validated by nas before export)."),
    ])


# Characters a header (the docstring's first line) may hold: no quotes, no
# backslashes, no newlines, so nothing in it can end the docstring.
_SAFE_HEADER = re.compile(r"^[A-Za-z0-9 _.,:;()+=/@#%-]{0,300}$")


def _merge_imports(nodes: list[ast.AST]) -> list[str]:
    """One line per module: `import x` / `import x as y`, and `from m import a, b`."""
    plain: list[str] = []
    froms: dict[str, list[str]] = {}
    for node in nodes:
        if isinstance(node, ast.Import):
            for a in node.names:
                line = f"import {a.name}" + (f" as {a.asname}" if a.asname else "")
                if line not in plain:
                    plain.append(line)
        else:
            names = froms.setdefault(node.module, [])
            for a in node.names:
                item = a.name + (f" as {a.asname}" if a.asname else "")
                if item not in names:
                    names.append(item)
    return plain + [f"from {m} import {', '.join(sorted(n))}" for m, n in froms.items()]


def _check_generated(source: str, spec: ArchSpec) -> None:
    """Defence in depth: the generated file imports only what it may, and its SPEC
    literal is made of the two spec classes, keywords and plain constants, equal
    to the validated spec."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for m in mods:
                if m.split(".")[0] not in ALLOWED_IMPORTS:
                    raise RuntimeError(f"generated model.py would import {m}; refusing (a bug in nas.export)")
    (spec_node,) = [n for n in tree.body if isinstance(n, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == "SPEC" for t in n.targets)]
    for node in ast.walk(spec_node.value):
        if isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in ("ArchSpec", "LayerSpec")) or node.args:
                raise RuntimeError("generated SPEC literal holds a call other than ArchSpec/LayerSpec; refusing")
        elif not isinstance(node, (ast.keyword, ast.Tuple, ast.Constant, ast.Name, ast.Load, ast.UnaryOp, ast.USub)):
            raise RuntimeError(f"generated SPEC literal holds {type(node).__name__}; refusing")
        elif isinstance(node, ast.Name) and node.id not in ("ArchSpec", "LayerSpec"):
            raise RuntimeError(f"generated SPEC literal names {node.id}; refusing")

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Call):
            return {k.arg: value(k.value) for k in node.keywords}
        if isinstance(node, ast.Tuple):
            return [value(e) for e in node.elts]
        return ast.literal_eval(node)

    if ArchSpec.from_dict(value(spec_node.value)) != spec:
        raise RuntimeError("generated SPEC literal does not equal the validated spec; refusing (a bug in nas.export)")


def generate_model_py(spec: ArchSpec, *, header: str = "") -> str:
    """The source of a standalone model.py for `spec` (see module docstring).

    `spec` is validated again here (a round trip through `ArchSpec.from_dict`), so
    only a valid architecture is ever written; the code is this package's own
    source; `header` (the docstring's first line) must be plain text.
    """
    if not isinstance(spec, ArchSpec):
        raise TypeError(f"generate_model_py needs an ArchSpec, got {type(spec).__name__}")
    spec = ArchSpec.from_dict(spec.to_dict())  # raises SpecError unless every value is valid
    if not _SAFE_HEADER.match(header):
        raise NasError(f"model.py header {header[:40]!r}... holds characters other than letters, digits and simple punctuation")
    kinds = sorted({layer.attention for layer in spec.layers})
    modules = [attention_base] + [sys.modules[REGISTRY[k].cls.__module__] for k in kinds] + [model_module]
    modules = list(dict.fromkeys(modules))  # two kinds may share a module
    pool: dict[str, tuple[ast.AST, str, int]] = {}
    import_nodes: list[ast.AST] = []
    for rank, mod in enumerate(modules):
        defs, _, source = _top_level(mod)
        tree = ast.parse(source)
        import_nodes += [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
                         and ((n.module if isinstance(n, ast.ImportFrom) else n.names[0].name) or "").split(".")[0]
                         in ALLOWED_IMPORTS - {"__future__"}]
        for name, node in defs.items():
            if name in pool:
                a = ast.get_source_segment(pool[name][1], pool[name][0])
                if a != ast.get_source_segment(source, node):
                    raise RuntimeError(f"{name} is defined differently in two attention modules; model.py cannot hold both")
                continue
            pool[name] = (node, source, rank)
    wanted = [REGISTRY[k].cls.__name__ for k in kinds] + ["Attention", "Block", "Transformer", "_init_weights"]
    included: list[str] = []
    todo = list(wanted)
    while todo:
        name = todo.pop()
        if name in included or name not in pool:
            continue
        included.append(name)
        todo.extend(n for n in _names(pool[name][0]) if n in pool and n not in included)
    # Keep the source files' order so base classes come before subclasses.
    order = {name: i for i, name in enumerate(pool)}
    chunks = []
    for name in sorted(included, key=lambda n: (pool[n][2], order[n])):
        node, source, _ = pool[name]
        seg = ast.get_source_segment(source, node, padded=False)
        decorators = "".join(f"@{ast.get_source_segment(source, d)}\n" for d in getattr(node, "decorator_list", []))
        if seg not in chunks:
            chunks.append(decorators + seg)
    classes = [REGISTRY[k].cls.__name__ for k in kinds]
    registry = ("ATTENTION = {\n" + "".join(f"    {k!r}: {c},\n" for k, c in zip(kinds, classes)) + "}\n"
                + "".join(f"{c}.kind = {k!r}\n" for k, c in zip(kinds, classes)))
    source = "\n".join([
        f'"""{header or "A model exported by nas."}\n\nStandalone: imports only torch and the standard library.\n'
        'Usage:\n\n    import torch\n    from model import build_model\n\n    model = build_model()\n'
        '    model.load_state_dict(torch.load("weights.pt", weights_only=True))\n    model.eval()\n'
        '    logits = model(tokens, padding_mask)\n\n'
        'tokens: (batch, length) int64, length <= SPEC.max_seq_len. padding_mask: (batch,\n'
        'length) bool, True = a real token; pass it whenever a batch holds padding (the\n'
        'task pads), else padding is attended to like real tokens; None when none does.\n"""',
        "",
        "from __future__ import annotations",
        "",
        "from dataclasses import dataclass",
        *_merge_imports(import_nodes),
        "",
        _spec_classes(),
        "",
        "",
        "\n\n\n".join(chunks),
        "",
        "",
        registry,
        "",
        "def attention_class(name: str):",
        "    return ATTENTION[name]",
        "",
        "",
        spec_literal(spec),
        "",
        "",
        "def build_model() -> Transformer:",
        '    """The exported architecture, freshly initialised; load weights.pt into it."""',
        "    return Transformer(SPEC)",
        "",
    ])
    _check_generated(source, spec)
    return source


# ---- weights --------------------------------------------------------------------
def _stored_config(study: optuna.Study) -> dict[str, Any]:
    cfg = study.user_attrs.get("nas:config")
    if not isinstance(cfg, dict):
        raise NasError(f"study {study.study_name!r} was not made by nas; nothing to export")
    return cfg


def trained_weights(study: optuna.Study, trial: optuna.trial.FrozenTrial, spec: ArchSpec, *, url: str,
                    retrain: int | None, device: str = "auto") -> tuple[dict[str, torch.Tensor], str]:
    """The trial's trained state dict and where it came from."""
    if retrain is not None:
        if retrain <= 0:
            raise NasError(f"--retrain must be a positive number of steps, got {retrain}")
        from evaluators.hardware import resolve_device
        from evaluators.tasks import get_task
        from evaluators.training import Trainer

        cfg = _stored_config(study)
        task = get_task(cfg["task"]["name"], **cfg["task"]["options"])
        dev = resolve_device(device)
        seed = int(trial.user_attrs.get("seed", 0))
        torch.manual_seed(seed)
        model = build_model(spec).to(dev)
        # The study's learning-rate schedule (e.g. constant after warm-up), as its trials trained.
        schedule = schedule_options(study.user_attrs.get(TRAIN_ATTR) or {})
        trainer = Trainer(model, task, max_steps=retrain, device=dev, seed=seed, **schedule)
        trainer.train(retrain)
        # The card's fitness line is the search's; these weights get their own figure.
        score = trainer.evaluate().fitness
        return ({k: v.detach().cpu() for k, v in model.state_dict().items()},
                f"retrained {retrain} steps (validation fitness of these weights: {score:.4f})")
    tables = Tables(url)
    row = tables.get_checkpoint(study.study_name, trial.number)
    twin = trial.user_attrs.get("replayed_from")
    if row is None and isinstance(twin, int):
        # A replay's weights are its twin's (same architecture and seed): --keep-checkpoints
        # may have kept only the twin's row.
        row = tables.get_checkpoint(study.study_name, twin)
    if row is None:
        raise NasError(f"trial {trial.number} has no checkpoint (only trials that clear the last hurdle save weights, "
                       f"and --keep-checkpoints K keeps the best K and the Pareto front's); train it anew: nas export --trial {trial.number} --retrain STEPS")
    path = Path(row["path"])
    if row["arch_hash"] != spec.content_hash():
        raise NasError(f"checkpoint of trial {trial.number} belongs to another architecture; train it anew with nas export --retrain STEPS")
    if not path.exists():
        raise NasError(f"checkpoint of trial {trial.number} is missing: {path} does not exist; restore it or train it anew with nas export --retrain STEPS")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: unpickling errors of many kinds
        raise NasError(f"checkpoint of trial {trial.number} at {path} cannot be read ({type(e).__name__}); restore it or train it anew with nas export --retrain STEPS") from None
    return state, f"checkpoint {path.name} ({row['step']} steps)"


def model_with_weights(spec: ArchSpec, state: dict[str, torch.Tensor], trial_number: int) -> torch.nn.Module:
    """`build_model(spec)` with `state` loaded (strictly: every tensor, right shapes)."""
    model = build_model(spec)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise NasError(f"checkpoint of trial {trial_number} is not a state dict; restore it or train it anew with nas export --retrain STEPS")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise NasError(f"checkpoint of trial {trial_number} does not fit its architecture ({str(e).splitlines()[0]}); train it anew with nas export --retrain STEPS") from None
    return model.eval()


def load_best(study: str, *, storage: str | None = None, trial: int | None = None) -> torch.nn.Module:
    """The best feasible (or the given) trial's model with its trained weights, in
    eval mode. `study` is a study name (in `storage`, default studies/NAME.db) or a
    storage URL whose database holds a single study."""
    from nas.storage import default_url

    study, storage = resolve_study(study, storage)
    s = open_nas_study(study, storage)
    t = pick_trial(s, trial)
    spec = trial_spec(t)
    state, _ = trained_weights(s, t, spec, url=storage or default_url(study), retrain=None)
    return model_with_weights(spec, state, t.number)


# ---- the card and the command ---------------------------------------------------
def _num(value: Any, fmt: str) -> str:
    """A stored number formatted, or '?' when missing or not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "?"
    return format(value, fmt)


def model_card(study: optuna.Study, trial: optuna.trial.FrozenTrial, spec: ArchSpec, weights_from: str | None,
               params: int | None = None) -> str:
    """card.md: what was measured about the trial during the search, and how it was found."""
    a = trial.user_attrs
    cfg = study.user_attrs.get("nas:config", {})
    cfg = cfg if isinstance(cfg, dict) else {}
    task = cfg.get("task", {}) if isinstance(cfg.get("task"), dict) else {}
    space = cfg.get("space", {}) if isinstance(cfg.get("space"), dict) else {}
    command = study.user_attrs.get("nas:command")
    if not isinstance(command, str):
        command = None
    if params is None:
        params = sum(p.numel() for p in build_model(spec).parameters())
    lines = [
        f"# {study.study_name}, trial {trial.number}",
        "",
        f"- fitness ({task.get('name', '?')} validation, after {_num(a.get('steps_trained'), 'd')} steps of the search): "
        f"{_num(trial.value, '.4f')}",
        f"- feasible under the budget: {'yes' if is_feasible(trial) else 'no'} (budget {json.dumps(cfg.get('budget'))})",
        f"- measured latency: {_num(a.get('latency_ms'), '.3f')} ms per batch of {_num(cfg.get('measure_batch'), 'd')} "
        f"x {spec.max_seq_len} tokens (median; robust CV {_num(a.get('latency_cv'), '.3f')})",
        f"- measured peak memory: {_num(a.get('memory_mb'), '.2f')} MiB inference, "
        f"{_num(a.get('train_memory_mb'), '.2f')} MiB per training step",
        f"- parameters: {params:,}",
        f"- device: {a.get('device', '?')}",
        f"- weights: {weights_from or 'none'}",
        f"- attention per layer: {', '.join(l.attention for l in spec.layers)}",
        f"- found by: `{command}`" if command else
        f"- found by: not recorded (study made through the Python API: task {task.get('name', '?')}, space {space.get('name', '?')})",
        "",
        "Load it without nas:",
        "",
        "```python",
        "import torch",
        "from model import build_model",
        "",
        "model = build_model()",
        'model.load_state_dict(torch.load("weights.pt", weights_only=True))',
        "model.eval()",
        "logits = model(tokens, padding_mask)  # padding_mask: bool, True = real token; None if nothing is padded",
        "```",
        "",
        f"Trained on task {task.get('name', '?')} with options {json.dumps(task.get('options'), sort_keys=True)}: "
        "tokens are that task's ids. Pass `padding_mask` whenever a batch holds padding (a task with "
        "sequences of several lengths pads them): without it, padding is attended to like real tokens.",
        "",
        "Architecture (arch.json):",
        "",
        "```json",
        json.dumps(spec.to_dict(), indent=2, sort_keys=True),
        "```",
        "",
    ]
    return "\n".join(lines)


EXPORT_FILES = ("model.py", "weights.pt", "arch.json", "card.md")


def export(study_name: str, *, storage: str | None = None, trial: int | None = None, out: str | Path | None = None,
           retrain: int | None = None, device: str = "auto", force: bool = False) -> Path:
    """Write model.py, weights.pt, arch.json and card.md; returns the folder.

    Everything is prepared (and the weights checked against the architecture)
    before the first file is written, so a refused export leaves nothing behind.
    A folder that already holds an export is refused unless `force`: it may be
    the only copy of a retrained model. Files are written under temporary names
    and renamed into place only once all four are written, so a failed write
    leaves an earlier export as it was."""
    from nas.storage import default_url

    if retrain is None and device != "auto":
        raise NasError(f"--device {device} has no effect without --retrain (the weights are the search's); "
                       f"drop it, or pass --retrain STEPS to train on that device")
    study_name, storage = resolve_study(study_name, storage)
    check_study_name(study_name)  # the name goes into model.py's docstring: plain characters only
    url = storage or default_url(study_name)
    study = open_nas_study(study_name, storage)
    t = pick_trial(study, trial)
    spec = trial_spec(t)
    folder = Path(out) if out is not None else Path("exports") / study_name
    _check_export_folder(folder, force)  # before a --retrain spends minutes
    state, weights_from = trained_weights(study, t, spec, url=url, retrain=retrain, device=device)
    model = model_with_weights(spec, state, t.number)  # refuses weights that do not fit
    header = f"{spec.depth}-layer transformer exported by nas from study {study_name}, trial {t.number}."
    files = {
        "model.py": generate_model_py(spec, header=header),
        "arch.json": json.dumps(spec.to_dict(), indent=2, sort_keys=True) + "\n",
        "card.md": model_card(study, t, spec, weights_from, sum(p.numel() for p in model.parameters())),
    }
    _write_export(folder, state, files)
    return folder


def _check_export_folder(folder: Path, force: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise NasError(f"--out {folder} is a file, not a folder; pass a folder path")
    above = next((p for p in folder.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise NasError(f"--out {folder}: {above} is a file, not a folder; pass another --out")
    for name in EXPORT_FILES:  # renaming onto a folder would fail after the others were replaced
        if (folder / name).is_dir():
            raise NasError(f"{folder / name} is a folder; move it away or pass another --out")
    held = [name for name in EXPORT_FILES if (folder / name).exists()] if folder.is_dir() else []
    if held and not force:
        raise NasError(f"{folder} already holds an export ({', '.join(held)}); pass --force to replace it, "
                       f"or another --out")


def _write_export(folder: Path, state: dict[str, torch.Tensor], files: dict[str, str]) -> None:
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # innermost first
    partial = {name: folder / f".{name}.partial" for name in EXPORT_FILES}
    done = False
    try:
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(state, partial["weights.pt"])
        for name, text in files.items():
            partial[name].write_text(text)
        for name in EXPORT_FILES:
            partial[name].replace(folder / name)
        done = True
    except (OSError, RuntimeError) as e:  # torch.save reports a file it cannot open as a RuntimeError
        why = (e.strerror or str(e)) if isinstance(e, OSError) else str(e).strip().splitlines()[-1]
        raise NasError(f"cannot write to {folder}: {why}; pass another --out") from None
    finally:
        if not done:  # also on Ctrl-C: no partial file (weights can be large), no folder made for nothing
            for p in partial.values():
                with contextlib.suppress(OSError):  # e.g. a folder never made: the error above says why
                    p.unlink(missing_ok=True)
            for p in created:
                try:
                    p.rmdir()
                except OSError:
                    break  # not empty (or never made): the folders above it stay too


def export_main(study: str, *, storage: str | None, trial: int | None, out: str | None, retrain: int | None,
                device: str = "auto", force: bool = False) -> int:
    folder = export(study, storage=storage, trial=trial, out=out, retrain=retrain, device=device, force=force)
    print(f"exported to {folder}/: model.py, weights.pt, arch.json, card.md")
    return 0


def command_line(argv: list[str]) -> str:
    """The command as typed, with any storage password redacted."""
    parts = []
    for i, a in enumerate(argv):
        parts.append(redact(a) if "://" in a else a)
    return "nas " + " ".join(shlex.quote(p) for p in parts)
