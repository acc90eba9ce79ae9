"""`nas export`: a trained trial becomes a standalone model.py + weights.pt that a
fresh interpreter, with none of our packages importable, loads and runs to the
same outputs as the model inside the search; every attention kind generates,
imports standalone, matches `build_model` and goes through `torch.export`; a
tampered study is refused before any code is written; each user error is one line.
"""

from __future__ import annotations

import ast
import io
import json
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import torch

import nas
from nas.cli import main
from nas.errors import NasError
from nas.export import generate_model_py
from nas.search import Search, SearchConfig
from nas.storage import default_url
from search_spaces import ArchSpec, LayerSpec, SpecError, build_model
from search_spaces.attention.registry import REGISTRY

TINY_TASK = dict(vocab_size=16, seq_len=16, num_kv_pairs=2, n_valid=64, batch_size=16)
# A two-kind mix of the tiny space, trained through both stages (enqueued, so no luck is involved).
MIXED = {"d_model": 16, "depth": 2,
         "layer0.attention": "local", "layer0.heads": 2, "layer0.ffn_mult": 2, "layer0.window": 4,
         "layer1.attention": "linear", "layer1.heads": 1, "layer1.ffn_mult": 2}
OUR_PACKAGES = ("nas", "search_spaces", "evaluators")
# Kinds whose exported module needs torch.jit.trace because torch.export.export
# fails on them. None today: every kind is plain tensor ops with static shapes.
EXPORT_FALLBACK: dict[str, str] = {}

# Run in a fresh interpreter, from the export folder: our packages cannot be
# imported (a None entry in sys.modules makes `import nas` raise ImportError).
CHILD_PRELUDE = textwrap.dedent(f"""
    import sys
    for name in {OUR_PACKAGES!r}:
        sys.modules[name] = None
    sys.path[:] = [p for p in sys.path if p not in ("", ".")]
    sys.path.insert(0, ".")
    import importlib.util, json
    import torch

    def load(path, name):
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    for name in {OUR_PACKAGES!r}:
        try:
            __import__(name)
        except ImportError:
            pass
        else:
            raise SystemExit(name + " is importable in the child")
""")


def run_child(folder: Path, body: str, timeout: float = 120) -> dict:
    code = CHILD_PRELUDE + textwrap.dedent(body)
    r = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=timeout,
                       env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("nas: error: "), err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny study whose only trial (local + linear) was trained through every stage."""
    root = tmp_path_factory.mktemp("study")
    cfg = SearchConfig(study="ex", storage=default_url("ex", root), space="tiny", task="mqar", task_options=TINY_TASK,
                       latency_ms=1000.0, trials=1, stages=(4, 8), warm_start=False, measure_threads=1)
    search = Search(cfg, log=io.StringIO())
    optuna.load_study(study_name="ex", storage=cfg.storage).enqueue_trial(MIXED)
    study = search.run(progress=False)
    (t,) = study.trials
    assert t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs["attention_mix"] == "local,linear"
    return {"root": root, "url": cfg.storage, "trial": t, "spec": ArchSpec.from_json(t.user_attrs["arch"])}


def search_model(trained) -> torch.nn.Module:
    """The model as the search trained it: its checkpoint in `build_model(spec)`."""
    model = build_model(trained["spec"])
    model.load_state_dict(torch.load(trained["trial"].user_attrs["checkpoint"], weights_only=True))
    return model.eval()


def sample_input(spec: ArchSpec, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, spec.vocab_size, (3, spec.max_seq_len), generator=g)
    mask = torch.ones(3, spec.max_seq_len, dtype=torch.bool)
    mask[1, spec.max_seq_len // 2:] = False
    return tokens, mask


def defined_classes(source: str) -> set[str]:
    return {n.name for n in ast.parse(source).body if isinstance(n, ast.ClassDef)}


# ---- a trained trial, exported and loaded without nas --------------------------
def test_export_runs_standalone_and_matches_the_search_model(trained, tmp_path, capsys):
    out = tmp_path / "export"
    code, stdout, err = cli(capsys, "export", "ex", "--storage", trained["url"], "--out", str(out))
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["arch.json", "card.md", "model.py", "weights.pt"]
    spec, t = trained["spec"], trained["trial"]
    assert ArchSpec.from_dict(json.loads((out / "arch.json").read_text())) == spec
    source = (out / "model.py").read_text()
    # Exactly the attention classes the architecture uses (and their bases), nothing else.
    kind_classes = {info.cls.__name__ for info in REGISTRY.values()}
    assert defined_classes(source) & kind_classes == {"LocalAttention", "LinearAttention"}
    assert {"LayerSpec", "ArchSpec", "Attention", "Block", "Transformer"} <= defined_classes(source)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mod = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            root = mod.split(".")[0]
            assert root == "torch" or root in sys.stdlib_module_names, mod  # torch and the standard library only
    card = (out / "card.md").read_text()
    for fragment in (f"{t.value:.4f}", f"{t.user_attrs['latency_ms']:.3f} ms", "MiB inference",
                     f"parameters: {t.user_attrs['params']:,}", t.user_attrs["device"], "local, linear", "found by",
                     "model(tokens, padding_mask)"):
        assert fragment in card, fragment
    # The task and its options, as the study stored them: what the token ids mean.
    stored_task = optuna.load_study(study_name="ex", storage=trained["url"]).user_attrs["nas:config"]["task"]
    assert f"task {stored_task['name']} with options {json.dumps(stored_task['options'], sort_keys=True)}" in card
    assert "model(tokens, padding_mask)" in source

    tokens, mask = sample_input(spec)
    with torch.no_grad():
        model = search_model(trained)
        torch.save({"tokens": tokens, "mask": mask, "plain": model(tokens), "masked": model(tokens, mask)},
                   out / "expected.pt")
    result = run_child(out, """
        import model as exported
        net = exported.build_model()
        net.load_state_dict(torch.load("weights.pt", weights_only=True))
        net.eval()
        e = torch.load("expected.pt", weights_only=True)
        with torch.no_grad():
            plain = net(e["tokens"])
            masked = net(e["tokens"], e["mask"])
        print(json.dumps({
            "dtype": str(plain.dtype),
            "plain": (plain - e["plain"]).abs().max().item(),
            "masked": (masked - e["masked"]).abs().max().item(),
            "kinds": [b.attn.kind for b in net.blocks],
            "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("nas", "search_spaces", "evaluators")
                             and sys.modules[m] is not None),
        }))
    """)
    assert result["dtype"] == "torch.float32"
    assert result["plain"] <= 1e-6 and result["masked"] <= 1e-6, result
    assert result["kinds"] == ["local", "linear"] and result["loaded"] == []


def test_load_best_by_name_and_by_url(trained):
    ref = search_model(trained)
    tokens, _ = sample_input(trained["spec"], seed=1)
    for model in (nas.load_best("ex", storage=trained["url"]), nas.load_best(trained["url"])):
        assert not model.training
        with torch.no_grad():
            assert torch.allclose(model(tokens), ref(tokens), atol=1e-6, rtol=0)


# ---- every attention kind, causal and bidirectional -----------------------------
KNOBS = dict(window=4, stride=4, block=4, global_tokens=2, random_blocks=1, rank=8)


def kind_specs() -> dict[str, ArchSpec]:
    specs = {}
    for kind, info in REGISTRY.items():
        for causal in (True, False):
            if (causal and info.causal) or (not causal and info.bidirectional):
                layer = LayerSpec(attention=kind, heads=2, ffn=32, seed=5, **{k: KNOBS[k] for k in info.knobs})
                specs[f"{kind}_{'causal' if causal else 'bidir'}"] = ArchSpec(
                    vocab_size=16, max_seq_len=16, d_model=16, causal=causal, layers=(layer,))
    # Everything at once: every causal kind in one model, every kind in a bidirectional one.
    for causal in (True, False):
        layers = tuple(LayerSpec(attention=k, heads=2, ffn=32, seed=i, **{n: KNOBS[n] for n in info.knobs})
                       for i, (k, info) in enumerate(REGISTRY.items()) if (info.causal if causal else info.bidirectional))
        specs[f"all_{'causal' if causal else 'bidir'}"] = ArchSpec(vocab_size=16, max_seq_len=16, d_model=16,
                                                                  causal=causal, layers=layers)
    return specs


def test_every_kind_generates_a_standalone_model_that_matches_and_exports(tmp_path):
    specs = kind_specs()
    assert {k.split("_")[0] for k in specs} >= set(REGISTRY)
    names = {}
    for i, (name, spec) in enumerate(specs.items()):
        source = generate_model_py(spec)
        compile(source, f"{name}.py", "exec")
        used = {REGISTRY[layer.attention].cls.__name__ for layer in spec.layers}
        others = {info.cls.__name__ for info in REGISTRY.values()} - used
        # Only the kinds used (a base class such as LongformerAttention for bigbird may come along).
        assert used <= defined_classes(source)
        assert not (others & defined_classes(source)) or name.startswith("bigbird"), (name, others & defined_classes(source))
        (tmp_path / f"m{i}.py").write_text(source)
        torch.manual_seed(i)
        model = build_model(spec).eval()
        tokens, mask = sample_input(spec, seed=i)
        with torch.no_grad():
            torch.save({"state": model.state_dict(), "tokens": tokens, "mask": mask,
                        "plain": model(tokens), "masked": model(tokens, mask)}, tmp_path / f"m{i}.pt")
        names[name] = i
    # torch.export once per kind: its causal model where it has one (the causal paths
    # hold the Python loops), else its bidirectional one.
    exported = sorted(f"{k}_causal" if info.causal else f"{k}_bidir" for k, info in REGISTRY.items())
    result = run_child(tmp_path, f"""
        import dataclasses
        out = {{}}
        for name, i in {names!r}.items():
            m = load(f"m{{i}}.py", f"m{{i}}")
            e = torch.load(f"m{{i}}.pt", weights_only=True)
            net = m.build_model().eval()
            net.load_state_dict(e["state"])
            with torch.no_grad():
                plain = (net(e["tokens"]) - e["plain"]).abs().max().item()
                masked = (net(e["tokens"], e["mask"]) - e["masked"]).abs().max().item()
            if name not in {exported!r}:  # outputs only (torch.export once per kind, for time)
                out[name] = dict(plain=plain, masked=masked, exported=0.0, how="torch.export",
                                 fields=[f.name for f in dataclasses.fields(m.LayerSpec)])
                continue
            try:
                ep = torch.export.export(net, (e["tokens"],))
                how, traced = "torch.export", ep.module()
            except Exception as err:
                how, traced = "jit.trace (" + type(err).__name__ + ": " + str(err).splitlines()[0][:200] + ")", \\
                    torch.jit.trace(net, (e["tokens"],))
            with torch.no_grad():
                via_export = (traced(e["tokens"]) - e["plain"]).abs().max().item()
            out[name] = dict(plain=plain, masked=masked, exported=via_export, how=how,
                             fields=[f.name for f in dataclasses.fields(m.LayerSpec)])
        print(json.dumps(out))
    """, timeout=300)
    fields = [f.name for f in __import__("dataclasses").fields(LayerSpec)]
    fallback = {}
    for name, r in result.items():
        assert r["plain"] <= 1e-6 and r["masked"] <= 1e-6, (name, r)
        assert r["exported"] <= 1e-5, (name, r)
        assert r["fields"] == fields, name  # model.py's LayerSpec keeps up with ours
        if r["how"] != "torch.export":
            fallback[name.split("_")[0]] = r["how"]
    assert set(fallback) == set(EXPORT_FALLBACK), fallback


# ---- safety: only a validated ArchSpec becomes code ------------------------------
def _tampered_copy(trained, tmp_path: Path, arch_text: str) -> str:
    src = sqlite3.connect(Path(trained["url"].removeprefix("sqlite:///")))
    path = tmp_path / "tampered.db"
    dst = sqlite3.connect(path)
    src.backup(dst)
    src.close()
    # Optuna refuses set_trial_user_attr on a finished trial, so the tampering is
    # done the way an attacker with the file would: straight in SQL.
    n = dst.execute("UPDATE trial_user_attributes SET value_json = ? WHERE key = 'arch'",
                    (json.dumps(arch_text),)).rowcount
    dst.commit()
    dst.close()
    assert n == 1
    return f"sqlite:///{path}"


@pytest.mark.parametrize("how", ["kind_code", "extra_field", "extra_layer_field", "knob_code", "not_json"])
def test_tampered_architecture_is_refused_and_nothing_written(trained, tmp_path, capsys, how):
    arch = json.loads(trained["trial"].user_attrs["arch"])
    if how == "kind_code":
        arch["layers"][0]["attention"] = "local', heads=2, ffn=32), __import__('os').system('touch /tmp/pwned'), LayerSpec(attention='local"
    elif how == "extra_field":
        arch["__class__"] = "import os"
    elif how == "extra_layer_field":
        arch["layers"][1]["code"] = "__import__('os')"
    elif how == "knob_code":
        arch["layers"][0]["window"] = "4); import os; (4"
    text = "{not json" if how == "not_json" else json.dumps(arch)
    url = _tampered_copy(trained, tmp_path, text)
    out = tmp_path / "out"
    code, _, err = cli(capsys, "export", "ex", "--storage", url, "--out", str(out))
    assert_one_line_error(code, err, "stored architecture is invalid")
    assert not out.exists()
    with pytest.raises(NasError, match="invalid"):
        nas.load_best("ex", storage=url)


def test_generator_refuses_unvalidated_input():
    spec = ArchSpec(vocab_size=16, max_seq_len=16, d_model=16, layers=(LayerSpec("full", 2, 32),))
    with pytest.raises(NasError, match="header"):
        generate_model_py(spec, header='x"""\nimport os\n"""')
    object.__setattr__(spec.layers[0], "attention", "full'); import os; ('")
    with pytest.raises(SpecError, match="unknown attention kind"):
        generate_model_py(spec)


# ---- each user error: one line, exit 2 ------------------------------------------
def test_user_errors_are_one_line(trained, tmp_path, capsys):
    url = trained["url"]
    code, _, err = cli(capsys, "export", "nope", "--storage", url, "--out", str(tmp_path / "a"))
    assert_one_line_error(code, err, "no study 'nope'")
    code, _, err = cli(capsys, "export", "nope", "--out", str(tmp_path / "a"))  # default storage: no file
    assert_one_line_error(code, err, "no study 'nope'")
    code, _, err = cli(capsys, "export", "ex", "--storage", url, "--trial", "7", "--out", str(tmp_path / "a"))
    assert_one_line_error(code, err, "no trial 7")

    # A study with no trial yet: nothing feasible to export.
    empty_url = default_url("empty", tmp_path)
    Search(SearchConfig(study="empty", storage=empty_url, space="tiny", task="mqar", task_options=TINY_TASK,
                        latency_ms=1000.0, trials=1, warm_start=False, measure_threads=1), log=io.StringIO())
    code, _, err = cli(capsys, "export", "empty", "--storage", empty_url, "--out", str(tmp_path / "a"))
    assert_one_line_error(code, err, "no feasible")

    # The checkpoint file is gone: say so and name the fix; --retrain still works.
    ckpt = Path(trained["trial"].user_attrs["checkpoint"])
    moved = ckpt.with_suffix(".moved")
    shutil.move(ckpt, moved)
    try:
        code, _, err = cli(capsys, "export", "ex", "--storage", url, "--out", str(tmp_path / "a"))
        assert_one_line_error(code, err, "checkpoint", "missing", "--retrain")
        code, _, err = cli(capsys, "export", "ex", "--storage", url, "--out", str(tmp_path / "r"), "--retrain", "2",
                           "--device", "cpu")
        assert code == 0, err
        card = (tmp_path / "r" / "card.md").read_text()
        assert "retrained 2 steps" in card
        # The card's figure for these weights is theirs: the exported weights, evaluated here.
        import re

        from evaluators.tasks import get_task

        stated = float(re.search(r"validation fitness of these weights: ([0-9.]+)", card).group(1))
        model = build_model(ArchSpec.from_json((tmp_path / "r" / "arch.json").read_text()))
        model.load_state_dict(torch.load(tmp_path / "r" / "weights.pt", weights_only=True))
        assert get_task("mqar", **TINY_TASK).evaluate(model.eval(), torch.device("cpu")).fitness == pytest.approx(stated, abs=1e-4)
    finally:
        shutil.move(moved, ckpt)
    assert not (tmp_path / "a").exists()


# ---- an earlier export is not overwritten by accident, nor half-replaced ------------
def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_an_existing_export_is_kept_unless_forced(trained, tmp_path, capsys):
    url, out = trained["url"], tmp_path / "export"
    assert cli(capsys, "export", "ex", "--storage", url, "--out", str(out))[0] == 0
    (out / "arch.json").write_text("{\"edited\": true}\n")  # the user's own change to the export
    before = _folder_bytes(out)
    code, _, err = cli(capsys, "export", "ex", "--storage", url, "--out", str(out))
    assert_one_line_error(code, err, "already holds an export", "--force", "--out")
    assert _folder_bytes(out) == before
    # Refused before a --retrain spends its steps: training is never reached.
    def no_training(*args, **kwargs):
        raise AssertionError("trained before the folder was checked")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("nas.export.trained_weights", no_training)
        code, _, err = cli(capsys, "export", "ex", "--storage", url, "--out", str(out), "--retrain", "2", "--device", "cpu")
    assert_one_line_error(code, err, "already holds an export")
    assert _folder_bytes(out) == before
    # A study that does not exist is named as such, not as an occupied folder.
    code, _, err = cli(capsys, "export", "nosuch", "--storage", url, "--out", str(out))
    assert_one_line_error(code, err, "no study 'nosuch'")

    code, _, err = cli(capsys, "export", "ex", "--storage", url, "--out", str(out), "--force")
    assert code == 0, err
    assert ArchSpec.from_dict(json.loads((out / "arch.json").read_text())) == trained["spec"]
    assert sorted(p.name for p in out.iterdir()) == ["arch.json", "card.md", "model.py", "weights.pt"]

    # A folder holding other files only is written into, and those files stay.
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert cli(capsys, "export", "ex", "--storage", url, "--out", str(other))[0] == 0
    assert (other / "notes.txt").read_text() == "keep me" and (other / "model.py").exists()

    code, _, err = cli(capsys, "export", "ex", "--storage", url, "--out", str(other / "notes.txt"))
    assert_one_line_error(code, err, "is a file, not a folder")
    code, _, err = cli(capsys, "export", "ex", "--storage", url, "--out", str(other / "notes.txt" / "sub" / "x"))
    assert_one_line_error(code, err, "notes.txt is a file, not a folder")
    assert (other / "notes.txt").read_text() == "keep me"


def test_retrain_with_the_studys_steps_reproduces_its_weights(trained, tmp_path, capsys):
    """--retrain trains as the study's trials did (same seed, same learning-rate
    schedule: constant after warm-up, stored with the study), so retraining for the
    search's own 8 steps gives the search's checkpoint back."""
    out = tmp_path / "again"
    code, _, err = cli(capsys, "export", "ex", "--storage", trained["url"], "--out", str(out), "--retrain", "8")
    assert code == 0, err
    again = torch.load(out / "weights.pt", weights_only=True)
    searched = search_model(trained).state_dict()
    assert again.keys() == searched.keys()
    assert all(torch.equal(again[k], searched[k]) for k in again)


def test_a_failed_write_leaves_the_earlier_export_whole(trained, tmp_path, capsys, monkeypatch):
    url, out = trained["url"], tmp_path / "export"
    assert cli(capsys, "export", "ex", "--storage", url, "--out", str(out))[0] == 0
    (out / "card.md").write_text("the earlier export\n")
    before = _folder_bytes(out)
    real_write_text = Path.write_text

    def fail_on_card(self: Path, text: str, *args, **kwargs):
        if "card.md" in self.name:
            raise OSError(28, "No space left on device")
        return real_write_text(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", fail_on_card)
    code, _, err = cli(capsys, "export", "ex", "--storage", url, "--out", str(out), "--force")
    assert_one_line_error(code, err, "cannot write", "No space left on device")
    assert _folder_bytes(out) == before  # no file replaced, no partial file left

    new = tmp_path / "new" / "deeper" / "export"
    code, _, err = cli(capsys, "export", "ex", "--storage", url, "--out", str(new))
    assert_one_line_error(code, err, "cannot write")
    assert not (tmp_path / "new").exists()  # no folder left behind, the ones above it included


def test_an_export_file_name_taken_by_a_folder_is_refused_before_writing(trained, tmp_path, capsys):
    url, out = trained["url"], tmp_path / "export"
    assert cli(capsys, "export", "ex", "--storage", url, "--out", str(out))[0] == 0
    (out / "card.md").unlink()
    (out / "card.md").mkdir()
    before = _folder_bytes_deep(out)
    code, _, err = cli(capsys, "export", "ex", "--storage", url, "--out", str(out), "--force")
    assert_one_line_error(code, err, "card.md is a folder")
    assert _folder_bytes_deep(out) == before  # weights.pt not replaced alone


def _folder_bytes_deep(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def test_ctrl_c_while_writing_leaves_no_partial_file(trained, tmp_path, capsys, monkeypatch):
    url, out = trained["url"], tmp_path / "export"
    real_save = torch.save

    def interrupted(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr("nas.export.torch.save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        nas.export.export("ex", storage=url, out=out)
    assert not out.exists()
