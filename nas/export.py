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
import inspect
import json
import shlex
import sys
import textwrap
from pathlib import Path
from typing import Any

import optuna
import torch

from nas.errors import NasError
from nas.results import best_feasible, is_feasible
from nas.show import open_study
from nas.storage import redact
from nas.tables import Tables
from search_spaces import ArchSpec, SpecError, build_model
from search_spaces.arch_spec import LayerSpec
from search_spaces.attention import base as attention_base
from search_spaces.attention.registry import REGISTRY
from search_spaces import model as model_module

# Modules whose imports may appear in model.py; anything else is a bug here.
ALLOWED_IMPORTS = {"__future__", "math", "typing", "dataclasses", "functools", "torch", "collections"}


# ---- choosing the trial --------------------------------------------------------
def pick_trial(study: optuna.Study, number: int | None) -> optuna.trial.FrozenTrial:
    if number is None:
        best = best_feasible(study)
        if best is None:
            raise NasError(f"study {study.study_name!r} has no feasible fully trained trial yet; run more trials, raise the budget, or pass --trial N")
        return best
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


_SPEC_CLASSES = '''
@dataclass(frozen=True)
class LayerSpec:
    """One block's choices (validated by nas before export)."""

    attention: str
    heads: int
    ffn: int
    window: int | None = None
    stride: int | None = None
    block: int | None = None
    global_tokens: int | None = None
    random_blocks: int | None = None
    rank: int | None = None
    seed: int = 0

    def knobs(self) -> dict:
        return {k: getattr(self, k) for k in ("window", "stride", "block", "global_tokens", "random_blocks", "rank")
                if getattr(self, k) is not None}


@dataclass(frozen=True)
class ArchSpec:
    """The architecture (validated by nas before export)."""

    vocab_size: int
    max_seq_len: int
    d_model: int
    layers: tuple
    causal: bool = True
    head: str = "token"
    n_classes: int = 0
    dropout: float = 0.0
'''


def generate_model_py(spec: ArchSpec, *, header: str = "") -> str:
    """The source of a standalone model.py for `spec` (see module docstring)."""
    kinds = sorted({layer.attention for layer in spec.layers})
    modules = [attention_base] + [sys.modules[REGISTRY[k].cls.__module__] for k in kinds] + [model_module]
    pool: dict[str, tuple[ast.AST, str]] = {}
    imports: list[str] = []
    for mod in modules:
        defs, imps, source = _top_level(mod)
        for name, node in defs.items():
            pool.setdefault(name, (node, source))
        imports += [i for i in imps if i not in imports and "__future__" not in i]
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
    for name in sorted(included, key=lambda n: (_module_rank(pool[n][1], modules), order[n])):
        node, source = pool[name]
        seg = ast.get_source_segment(source, node, padded=False)
        decorators = "".join(f"@{ast.get_source_segment(source, d)}\n" for d in getattr(node, "decorator_list", []))
        if seg not in chunks:
            chunks.append(decorators + seg)
    registry = "ATTENTION = {\n" + "".join(f"    {k!r}: {REGISTRY[k].cls.__name__},\n" for k in kinds) + "}\n"
    return "\n".join([
        f'"""{header or "A model exported by nas."}\n\nStandalone: imports only torch and the standard library.\nUsage: model = build_model(); model.load_state_dict(torch.load("weights.pt", weights_only=True))\n"""',
        "",
        "from __future__ import annotations",
        "",
        "from dataclasses import dataclass",
        *imports,
        "",
        _SPEC_CLASSES.strip("\n"),
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


def _module_rank(source: str, modules) -> int:
    for i, m in enumerate(modules):
        if inspect.getsource(m) == source:
            return i
    return len(modules)


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
        Trainer(model, task, max_steps=retrain, device=dev, seed=seed).train(retrain)
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}, f"retrained {retrain} steps"
    row = Tables(url).get_checkpoint(study.study_name, trial.number)
    if row is None:
        raise NasError(f"trial {trial.number} has no checkpoint (only trials that clear the last hurdle save weights); pass --retrain STEPS to train it")
    path = Path(row["path"])
    if row["arch_hash"] != spec.content_hash():
        raise NasError(f"checkpoint of trial {trial.number} belongs to another architecture; pass --retrain STEPS")
    if not path.exists():
        raise NasError(f"checkpoint of trial {trial.number} is missing: {path} does not exist; restore it or pass --retrain STEPS")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state, f"checkpoint {path.name} ({row['step']} steps)"


def load_best(study: str, *, storage: str | None = None, trial: int | None = None) -> torch.nn.Module:
    """The best feasible (or the given) trial's model with its trained weights."""
    from nas.storage import default_url

    s = open_study(study, storage)
    t = pick_trial(s, trial)
    spec = trial_spec(t)
    state, _ = trained_weights(s, t, spec, url=storage or default_url(study), retrain=None)
    model = build_model(spec)
    model.load_state_dict(state)
    return model.eval()


# ---- the card and the command ---------------------------------------------------
def model_card(study: optuna.Study, trial: optuna.trial.FrozenTrial, spec: ArchSpec, weights_from: str | None) -> str:
    a = trial.user_attrs
    cfg = study.user_attrs.get("nas:config", {})
    fit = trial.value if trial.value is not None else None
    lines = [
        f"# {study.study_name}, trial {trial.number}",
        "",
        f"- fitness ({cfg.get('task', {}).get('name', '?')} validation): {'-' if fit is None else f'{fit:.4f}'}",
        f"- feasible under the budget: {'yes' if is_feasible(trial) else 'no'} (budget {json.dumps(cfg.get('budget'))})",
        f"- measured latency: {a.get('latency_ms', float('nan')):.3f} ms per batch of {cfg.get('measure_batch', '?')} "
        f"x {spec.max_seq_len} tokens (median; CV {a.get('latency_cv', float('nan')):.3f})",
        f"- measured peak memory: {a.get('memory_mb', float('nan')):.2f} MiB inference, {a.get('train_memory_mb', float('nan')):.2f} MiB per training step",
        f"- parameters: {a.get('params', sum(p.numel() for p in build_model(spec).parameters())):,}",
        f"- device: {a.get('device', '?')}",
        f"- training steps: {a.get('steps_trained', '?')}; weights: {weights_from or 'none'}",
        f"- attention per layer: {', '.join(l.attention for l in spec.layers)}",
        f"- found by: `{study.user_attrs.get('nas:command', 'nas search --study ' + study.study_name)}`",
        "",
        "```json",
        json.dumps(spec.to_dict(), indent=2, sort_keys=True),
        "```",
        "",
    ]
    return "\n".join(lines)


def export(study_name: str, *, storage: str | None = None, trial: int | None = None, out: str | Path | None = None,
           retrain: int | None = None, device: str = "auto") -> Path:
    """Write model.py, weights.pt, arch.json and card.md; returns the folder."""
    from nas.storage import default_url

    url = storage or default_url(study_name)
    study = open_study(study_name, storage)
    t = pick_trial(study, trial)
    spec = trial_spec(t)
    state, weights_from = trained_weights(study, t, spec, url=url, retrain=retrain, device=device)
    folder = Path(out) if out is not None else Path("exports") / study_name
    folder.mkdir(parents=True, exist_ok=True)
    header = f"{spec.depth}-layer transformer exported by nas from study {study_name}, trial {t.number}."
    (folder / "model.py").write_text(generate_model_py(spec, header=header))
    (folder / "arch.json").write_text(json.dumps(spec.to_dict(), indent=2, sort_keys=True) + "\n")
    torch.save(state, folder / "weights.pt")
    (folder / "card.md").write_text(model_card(study, t, spec, weights_from))
    return folder


def export_main(study: str, *, storage: str | None, trial: int | None, out: str | None, retrain: int | None,
                device: str = "auto") -> int:
    folder = export(study, storage=storage, trial=trial, out=out, retrain=retrain, device=device)
    print(f"exported to {folder}/: model.py, weights.pt, arch.json, card.md")
    return 0


def command_line(argv: list[str]) -> str:
    """The command as typed, with any storage password redacted."""
    parts = []
    for i, a in enumerate(argv):
        parts.append(redact(a) if "://" in a else a)
    return "nas " + " ".join(shlex.quote(p) for p in parts)
