"""Bad input through the command line: each is ONE line on stderr starting with
`nas: error:`, a non-zero exit, and no change to anything stored (the database
file's bytes, its trials). Also: a study remembers task, space, budget, device;
and a training setting that makes the loss NaN fails the trial, not the search."""

from __future__ import annotations

import hashlib
import io
import shutil
import sqlite3
import subprocess
from pathlib import Path

import optuna
import pytest

from nas.cli import main
from nas.search import Search, SearchConfig
from nas.storage import default_url
from fixture_spaces import TWO_ARCH_SPACE

TINY = dict(vocab_size=16, seq_len=16, num_kv_pairs=2, n_valid=64, batch_size=16)
TASK_ARGS = ["--task", "mqar"] + [x for k, v in TINY.items() for x in ("--task-option", f"{k}={v}")]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """A real study `t` (space tiny, 2 finished trials), checkpointed into one file."""
    root = tmp_path_factory.mktemp("made")
    cfg = SearchConfig(study="t", storage=default_url("t", root), space="tiny", task="mqar", task_options=TINY,
                       latency_ms=1000.0, trials=2, stages=(1,), population=3, tournament=2, hurdle_trials=2,
                       command="nas search --study t ...")
    Search(cfg, log=io.StringIO()).run(progress=False)
    con = sqlite3.connect(root / "t.db")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return root / "t.db"


@pytest.fixture
def db(made, tmp_path) -> Path:
    path = tmp_path / "t.db"
    shutil.copy(made, path)
    return path


def stored(path: Path) -> tuple:
    """What must not change: the file's bytes, the WAL's content, and the trials."""
    wal = path.with_name(path.name + "-wal")
    wal_bytes = wal.read_bytes() if wal.exists() else b""
    trials = []
    if path.exists() and path.read_bytes()[:16] == b"SQLite format 3\x00":
        try:
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            trials = con.execute("SELECT trial_id, number, state FROM trials ORDER BY trial_id").fetchall()
            con.close()
        except sqlite3.DatabaseError:
            pass
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None, wal_bytes, trials


def fails_cleanly(capsys, argv: list[str], *expect: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0
    assert len(lines) == 1 and lines[0].startswith("nas: error: "), err
    for text in expect:
        assert text in lines[0], lines[0]
    return lines[0]


def search_args(db: Path, *extra: str, study: str = "t") -> list[str]:
    return ["search", "--study", study, "--storage", f"sqlite:///{db}", "--space", "tiny", *TASK_ARGS,
            "--latency-ms", "1000", "--trials", "3", "--stages", "1", *extra]


def with_option(argv: list[str], flag: str, value: str) -> list[str]:
    out = list(argv)
    out[out.index(flag) + 1] = value
    return out


@pytest.mark.parametrize("text, expect", [
    ('name = "x"\n[model\nd_model = [16]\n', "not valid TOML"),
    ('name = "x"\ncolour = 3\n[model]\nd_model = [16]\ndepth = [1]\n[layer]\nattention = ["full"]\nheads = [1]\nffn_mult = [2]\n', "unknown"),
    ('name = "x"\n[model]\nd_model = [16]\ndepth = [1]\n[layer]\nattention = ["fancy"]\nheads = [1]\nffn_mult = [2]\n', "fancy"),
    # Every window choice longer than the task's 16 tokens: the error says so and how to fix it.
    ('name = "x"\n[model]\nd_model = [16]\ndepth = [1]\n[layer]\nattention = ["local", "linformer"]\nheads = [1]\n'
     'ffn_mult = [2]\n[knobs]\nwindow = [32, 64]\nrank = [4]\n',
     "(local's window choices [32, 64] all exceed the sequence length 16; linformer cannot be causal); add choices that fit"),
], ids=["bad-toml", "unknown-key", "unknown-attention", "knobs-too-long"])
def test_bad_space_file(capsys, db, tmp_path, text, expect):
    space = tmp_path / "s.toml"
    space.write_text(text)
    before = stored(db)
    fails_cleanly(capsys, with_option(search_args(db, study="new"), "--space", str(space)), expect)
    assert stored(db) == before


def test_a_kind_left_out_by_its_knobs_is_named(tmp_path):
    # local's windows do not fit 16 tokens, full remains: the search runs, and says
    # that local is left out (it dropped it silently).
    space = tmp_path / "s.toml"
    space.write_text('name = "x"\n[model]\nd_model = [16]\ndepth = [1]\n[layer]\nattention = ["local", "full"]\n'
                     'heads = [1]\nffn_mult = [2]\n[knobs]\nwindow = [32, 64]\n')
    log = io.StringIO()
    search = Search(SearchConfig(study="k", storage=default_url("k", tmp_path), space=str(space), task="mqar",
                                 task_options=TINY, latency_ms=1000.0, trials=1, stages=(1,)), log=log)
    assert search.space.attention == ("full",)
    assert ("note: space x on task mqar: local's window choices [32, 64] all exceed the sequence length 16, "
            "so local is left out") in log.getvalue()


def test_unknown_task(capsys, db):
    before = stored(db)
    fails_cleanly(capsys, with_option(search_args(db), "--task", "nosuch"), "unknown task", "mqar")
    assert stored(db) == before


def test_impossible_budget_measures_cheapest_first(capsys, db):
    before = stored(db)
    fails_cleanly(capsys, with_option(search_args(db, study="new"), "--latency-ms", "0.0001"), "cannot be met",
                  "smallest architecture of each attention kind")
    assert stored(db) == before
    assert [s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{db}")] == ["t"]


@pytest.mark.parametrize("value", ["0", "-1", "abc"])
def test_zero_or_negative_budget(capsys, db, value):
    before = stored(db)
    fails_cleanly(capsys, with_option(search_args(db, study="new"), "--latency-ms", value), "--latency-ms")
    assert stored(db) == before


def without_latency_ms(argv: list[str]) -> list[str]:
    i = argv.index("--latency-ms")
    return argv[:i] + argv[i + 2:]


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan"])
def test_bad_latency_fraction(capsys, db, value):
    before = stored(db)
    fails_cleanly(capsys, without_latency_ms(search_args(db, "--latency-fraction", value, study="new")), "--latency-fraction")
    assert stored(db) == before


def test_latency_fraction_and_latency_ms_together(capsys, db):
    before = stored(db)
    fails_cleanly(capsys, search_args(db, "--latency-fraction", "0.5", study="new"), "--latency-ms and --latency-fraction")
    assert stored(db) == before


def test_impossible_latency_fraction(capsys, db):
    before = stored(db)
    fails_cleanly(capsys, without_latency_ms(search_args(db, "--latency-fraction", "1e-6", study="new")),
                  "cannot be met", "raise --latency-fraction above")
    assert stored(db) == before
    assert [s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{db}")] == ["t"]


def test_latency_fraction_on_a_study_made_with_latency_ms(capsys, db):
    before = stored(db)
    fails_cleanly(capsys, without_latency_ms(search_args(db, "--latency-fraction", "0.5")), "latency_fraction: stored None")
    assert stored(db) == before


@pytest.mark.parametrize("value", ["0", "-5", "1e3"])
def test_bad_step_budget(capsys, db, value):
    before = stored(db)
    fails_cleanly(capsys, search_args(db, "--step-budget", value, study="new"), "--step-budget")
    assert stored(db) == before


@pytest.mark.parametrize("value", ["0", "1.5", "abc"])
def test_bad_min_lr_ratio(capsys, db, value):
    before = stored(db)
    fails_cleanly(capsys, search_args(db, "--min-lr-ratio", value, study="new"), "--min-lr-ratio")
    assert stored(db) == before


@pytest.mark.parametrize("command", ["show", "export"])
def test_unknown_study(capsys, db, tmp_path, command):
    before = stored(db)
    fails_cleanly(capsys, [command, "nosuch", "--storage", f"sqlite:///{db}"], "no study 'nosuch'", "studies there: t")
    assert stored(db) == before
    fails_cleanly(capsys, [command, "nosuch", "--storage", f"sqlite:///{tmp_path}/none.db"], "no study 'nosuch'")
    assert not (tmp_path / "none.db").exists()


def test_storage_folder_that_does_not_exist(capsys, tmp_path):
    fails_cleanly(capsys, search_args(tmp_path / "nope" / "x.db", study="x"), "does not exist", "mkdir")
    assert not (tmp_path / "nope").exists()


def _make_read_only(folder: Path, monkeypatch) -> str:
    """chattr +i (root ignores permission bits, not the immutable flag); where
    chattr is not possible, fall back to os.access saying no for that folder."""
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        return "chattr"
    import os

    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if (mode & os.W_OK and Path(p) in (folder, *folder.iterdir()))
                        else real(p, mode, *a, **k))
    return "os.access"


@pytest.mark.parametrize("existing", [False, True], ids=["new-study", "existing-study"])
def test_read_only_storage_folder(capsys, made, tmp_path, monkeypatch, existing):
    folder = tmp_path / "ro"
    folder.mkdir()
    if existing:
        shutil.copy(made, folder / "t.db")
    before = stored(folder / "t.db"), sorted(p.name for p in folder.iterdir())  # (reading may add -wal/-shm)
    how = _make_read_only(folder, monkeypatch)
    try:
        fails_cleanly(capsys, search_args(folder / "t.db"), "read-only")
        assert (stored(folder / "t.db"), sorted(p.name for p in folder.iterdir())) == before, how
    finally:
        if how == "chattr":
            subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_corrupt_database_garbage(capsys, tmp_path):
    path = tmp_path / "t.db"
    path.write_bytes(b"this is not a database\n" * 100)
    before = stored(path)
    fails_cleanly(capsys, search_args(path), "not an SQLite database")
    fails_cleanly(capsys, ["show", "t", "--storage", f"sqlite:///{path}"], "not an SQLite database")
    assert stored(path) == before


def test_corrupt_database_truncated(capsys, db):
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    before = stored(db)
    fails_cleanly(capsys, search_args(db), "corrupt")
    fails_cleanly(capsys, ["show", "t", "--storage", f"sqlite:///{db}"], "corrupt")
    assert stored(db) == before


@pytest.mark.parametrize("change, expect", [
    (("--task-option", "num_kv_pairs=2", "num_kv_pairs=3"), "task.options.num_kv_pairs: stored 2 vs asked 3"),
    (("--space", "tiny", "default"), "space.name: stored \"tiny\" vs asked \"default\""),
    (("--latency-ms", "1000", "999"), "budget.latency_ms: stored 1000.0 vs asked 999.0"),
    (("--device", None, "cpu"), None),  # same device: accepted (checked below without running trials)
], ids=["task", "space", "budget", "device-same"])
def test_study_remembers_its_settings(capsys, db, change, expect):
    flag, old, new = change
    argv = search_args(db)
    if old is None:
        argv += [flag, new]
    else:
        argv[argv.index(old)] = new
    if expect is None:
        return  # nothing to refuse; resuming with the stored settings is covered by test_search
    before = stored(db)
    fails_cleanly(capsys, argv, "exists with different settings", expect)
    assert stored(db) == before


def test_other_device_is_refused(capsys, db):
    """The stored device is `cpu:1threads`; measuring with 2 threads is another device."""
    before = stored(db)
    fails_cleanly(capsys, search_args(db, "--measure-threads", "2"), "device: stored")
    assert stored(db) == before


def test_nan_training_fails_the_trial_and_the_search_goes_on(capsys, tmp_path):
    space = tmp_path / "two.toml"
    space.write_text(TWO_ARCH_SPACE)
    argv = ["search", "--study", "n", "--storage", f"sqlite:///{tmp_path}/n.db", "--space", str(space), *TASK_ARGS,
            "--latency-ms", "1000", "--trials", "1", "--stages", "3", "--lr", "1e30", "--quiet"]
    assert main(argv) == 1  # it gave up: a script running it sees the search failed
    out = capsys.readouterr().out
    assert "stopped after 10 failed trials" in out
    study = optuna.load_study(study_name="n", storage=f"sqlite:///{tmp_path}/n.db")
    assert study.user_attrs["nas:train_options"] == {"lr": 1e30, "min_lr_ratio": 1.0}
    assert len(study.trials) == 10  # it went on after the first failure, up to the failure limit
    for t in study.trials:
        assert t.state == optuna.trial.TrialState.FAIL
        assert t.user_attrs["failure"] == "diverged"
        assert "nan" in t.user_attrs["failure_message"] and "learning rate" in t.user_attrs["failure_message"]
    # `nas show`, where that message sends the user, lists them with their reason.
    assert main(["show", "n", "--storage", f"sqlite:///{tmp_path}/n.db"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("failed trials: 10"):].splitlines()
    assert table[1].split()[:2] == ["failure", "trials"]
    assert table[3].split()[:3] == ["diverged", "10", "9"] and "learning rate" in table[3]


def test_unknown_measure_dtype(capsys, db):
    before = stored(db)
    fails_cleanly(capsys, search_args(db, "--measure-dtype", "fp8", study="new"), "--measure-dtype", "bfloat16")
    assert stored(db) == before


@pytest.mark.parametrize("flag, value", [
    ("--seed", "-1"), ("--population", "0"), ("--tournament", "0"), ("--tournament", "20"),
    ("--mutation-prob", "2"), ("--mutation-prob", "-0.5"), ("--hurdle-trials", "0"), ("--steps", "0"),
    ("--measure-threads", "-1"), ("--measure-batch", "0"), ("--keep-checkpoints", "0"),
], ids=lambda x: x)
def test_bad_search_numbers_are_refused_before_anything_is_stored(capsys, db, flag, value):
    before = stored(db)
    argv = search_args(db, f"{flag}={value}", study="new")
    if flag == "--steps":
        argv = argv[:argv.index("--stages")] + argv[argv.index("--stages") + 2:]
    fails_cleanly(capsys, argv, flag)
    assert stored(db) == before
    assert [s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{db}")] == ["t"]


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_in_memory_storage_is_refused(capsys, url):
    fails_cleanly(capsys, ["search", "--study", "m", "--storage", url, "--trials", "1"], "in-memory", "sqlite:///studies/")


def test_storage_path_that_is_a_folder(capsys, tmp_path):
    (tmp_path / "d.db").mkdir()
    for argv in (search_args(tmp_path / "d.db"), ["show", "t", "--storage", f"sqlite:///{tmp_path}/d.db"]):
        fails_cleanly(capsys, argv, "is a folder", "NAME.db")


@pytest.mark.parametrize("command", ["show", "export"])
def test_show_and_export_leave_other_sqlite_files_alone(capsys, tmp_path, command):
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE notes (x TEXT)")
    con.commit()
    con.close()
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    for path in (other, empty):
        before = path.read_bytes()
        fails_cleanly(capsys, [command, "t", "--storage", f"sqlite:///{path}"], "not a study database")
        assert path.read_bytes() == before  # no Optuna tables written into it


def test_search_leaves_another_programs_sqlite_file_alone(capsys, tmp_path):
    """A search into a file that holds another program's tables and no study is
    refused, the file unchanged; an empty file (or one without tables) is taken."""
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE notes (x TEXT)")
    con.commit()
    con.close()
    before = other.read_bytes()
    fails_cleanly(capsys, search_args(other), "another program's tables (notes)", "--storage")
    assert other.read_bytes() == before
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    assert main(search_args(empty)) == 0


def test_show_takes_a_database_url_as_export_does(capsys, db, monkeypatch, tmp_path):
    assert main(["show", f"sqlite:///{db}"]) == 0 and "study t:" in capsys.readouterr().out
    # $NAS_STORAGE names the default database; a URL given in place of the study wins over it.
    monkeypatch.setenv("NAS_STORAGE", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    assert main(["show", f"sqlite:///{db}"]) == 0 and "study t:" in capsys.readouterr().out
    assert main(["export", f"sqlite:///{db}", "--out", str(tmp_path / "x")]) == 0


@pytest.mark.parametrize("number", [True, "0", 1.0])
def test_load_best_refuses_a_trial_that_is_not_a_number(db, number):
    from nas.errors import NasError
    from nas.export import load_best

    with pytest.raises(NasError, match="trial must be a trial number"):
        load_best("t", storage=f"sqlite:///{db}", trial=number)


def test_export_of_a_study_nas_did_not_make_says_so(capsys, tmp_path):
    from nas.errors import NasError
    from nas.export import load_best

    url = f"sqlite:///{tmp_path / 'o.db'}"
    study = optuna.create_study(study_name="o", storage=url)
    study.add_trial(optuna.trial.create_trial(value=0.5))
    fails_cleanly(capsys, ["export", "o", "--storage", url, "--trial", "0", "--out", str(tmp_path / "x")],
                  "not made by nas search")
    with pytest.raises(NasError, match="not made by nas search"):
        load_best("o", storage=url)
    assert not (tmp_path / "x").exists()


def test_plot_without_matplotlib_is_refused_before_the_report(capsys, db, monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    code = main(["show", "t", "--storage", f"sqlite:///{db}", "--plot", str(tmp_path / "p.png")])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""  # no report printed first
    assert err.startswith("nas: error: --plot needs matplotlib") and "nas[plot]" in err and len(err.splitlines()) == 1


def test_steps_that_disagree_with_the_stages_are_refused(capsys, tmp_path):
    """--stages ends at a candidate's full training: a --steps that says otherwise was
    silently ignored; one that agrees is accepted."""
    db = tmp_path / "s.db"
    fails_cleanly(capsys, search_args(db, "--steps", "30"), "--steps 30 and --stages 1 disagree")
    fails_cleanly(capsys, search_args(db, "--steps", "0"), "--steps 0 and --stages 1 disagree")
    assert not db.exists()
    assert main(search_args(db, "--steps", "1")) == 0


def test_storage_folder_that_says_it_is_writable_and_is_not(capsys):
    """/proc passes os.access(W_OK) for root, as a root-squashed NFS folder can; SQLite
    then cannot create the file: one line, not a traceback."""
    import os

    if not (Path("/proc").is_dir() and os.access("/proc", os.W_OK)):
        pytest.skip("needs /proc to look writable (Linux, as root)")
    fails_cleanly(capsys, search_args(Path("/proc/nas-test.db")), "cannot open database file /proc/nas-test.db")


def test_a_database_whose_optuna_schema_is_half_made_is_not_foreign(tmp_path):
    """Workers started together on a new file: one may find the schema another is
    still creating (some of Optuna's tables, not all). That is a study database."""
    from optuna.storages._rdb import models

    from nas.storage import OPTUNA_SCHEMA, check_storage

    assert set(models.BaseModel.metadata.tables) <= OPTUNA_SCHEMA  # Optuna's schema, as this Optuna makes it
    half = tmp_path / "half.db"
    con = sqlite3.connect(half)
    for name in ("studies", "study_directions", "version_info"):
        con.execute(f"CREATE TABLE {name} (x INTEGER)")
    con.commit()
    con.close()
    check_storage(f"sqlite:///{half}")  # no error


def test_storage_folder_that_is_a_file(capsys, tmp_path):
    (tmp_path / "f").write_text("x")
    fails_cleanly(capsys, search_args(tmp_path / "f" / "t.db"), "is a file, not a folder")


def test_load_best_from_a_url_leaves_another_sqlite_file_alone(tmp_path):
    from nas.errors import NasError
    from nas.export import load_best

    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE notes (x TEXT)").connection.commit()
    before = other.read_bytes()
    with pytest.raises(NasError, match="not a study database"):
        load_best(f"sqlite:///{other}")
    assert other.read_bytes() == before


@pytest.mark.parametrize("name, expect", [
    ("plots", "is a folder"), ("nope/p.png", "does not exist"), ("p.xyz", "unknown image format"),
    ("p", "unknown image format"),
], ids=["folder", "missing-folder", "format", "no-suffix"])
def test_bad_plot_path_is_refused_before_reading_the_study(capsys, db, tmp_path, monkeypatch, name, expect):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plots").mkdir()
    fails_cleanly(capsys, ["show", "t", "--storage", f"sqlite:///{db}", "--plot", name], "--plot", expect)
    assert capsys.readouterr().out == ""  # refused before the study was shown


def test_space_file_that_is_not_utf8(capsys, db, tmp_path):
    space = tmp_path / "s.toml"
    space.write_bytes(b'name = "\xff\xfe"\n')
    fails_cleanly(capsys, with_option(search_args(db, study="new"), "--space", str(space)), "not UTF-8", str(space))


def test_task_too_large_to_build_is_a_task_error(capsys, db):
    before = stored(db)
    fails_cleanly(capsys, search_args(db, "--task-option", "seq_len=1000000000000", study="new"),
                  "does not fit in memory", "lower the sizes")
    assert stored(db) == before


def test_export_into_a_read_only_folder(capsys, made, tmp_path):
    out = tmp_path / "ro_out"
    out.mkdir()
    if not (shutil.which("chattr") and subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode == 0):
        pytest.skip("needs chattr +i (root ignores permission bits) on this file system")
    try:
        fails_cleanly(capsys, ["export", "t", "--storage", f"sqlite:///{made}", "--out", str(out)],
                      "cannot write", "--out")
        assert list(out.iterdir()) == []
    finally:
        subprocess.run(["chattr", "-i", str(out)], check=True)


def test_show_top_must_be_positive(capsys, db):
    fails_cleanly(capsys, ["show", "t", "--storage", f"sqlite:///{db}", "--top=-1"], "--top")


def test_every_command_takes_the_storage_from_the_environment(capsys, monkeypatch, tmp_path):
    """README, "Many machines": the URL exported once as $NAS_STORAGE serves search,
    show and export alike (only `nas worker` read it before); --storage wins over it."""
    monkeypatch.chdir(tmp_path)
    shared = tmp_path / "shared.db"
    monkeypatch.setenv("NAS_STORAGE", f"sqlite:///{shared}")
    argv = search_args(shared, study="e")
    del argv[argv.index("--storage"):argv.index("--storage") + 2]
    assert main(argv) == 0
    assert shared.exists() and not (tmp_path / "studies").exists()
    capsys.readouterr()
    assert main(["show", "e"]) == 0 and "best feasible" in capsys.readouterr().out
    assert main(["export", "e", "--out", str(tmp_path / "x")]) == 0 and (tmp_path / "x" / "model.py").exists()
    monkeypatch.setenv("NAS_STORAGE", f"sqlite:///{tmp_path / 'other.db'}")
    assert main(["show", "e", "--storage", f"sqlite:///{shared}"]) == 0


def test_show_into_a_closed_pipe_stops_quietly(db):
    """`nas show t | head -1`: once the reader has gone, the command stops without a
    traceback, with the status of a command killed by SIGPIPE, and the study is as
    it was."""
    import os
    import sys

    before = stored(db)
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    try:
        done = subprocess.run([sys.executable, "-c", "import sys; from nas.cli import main; sys.exit(main())",
                               "show", "t", "--storage", f"sqlite:///{db}"], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    finally:
        os.close(write)
    assert done.returncode == 141 and "Traceback" not in done.stderr, done.stderr
    assert stored(db) == before


def test_show_reads_a_read_only_database(capsys, made, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    shutil.copy(made, folder / "t.db")
    before = stored(folder / "t.db")
    if not (shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder / "t.db"), str(folder)],
                                                      capture_output=True).returncode == 0):
        pytest.skip("needs chattr +i (root ignores permission bits) on this file system")
    try:
        assert main(["show", "t", "--storage", f"sqlite:///{folder / 't.db'}"]) == 0
        assert "training steps spent" in capsys.readouterr().out
    finally:
        subprocess.run(["chattr", "-i", str(folder / "t.db"), str(folder)], check=True)
    assert stored(folder / "t.db") == before


def test_export_device_without_retrain_is_refused(capsys, made, tmp_path):
    fails_cleanly(capsys, ["export", "t", "--storage", f"sqlite:///{made}", "--device", "foo", "--out", str(tmp_path / "x")],
                  "--device foo has no effect without --retrain")
    assert not (tmp_path / "x").exists()


def _immutable(*paths: Path) -> bool:
    return bool(shutil.which("chattr")) and subprocess.run(["chattr", "+i", *map(str, paths)],
                                                           capture_output=True).returncode == 0


def test_export_by_url_reads_a_read_only_database(made, tmp_path):
    from nas.export import resolve_study

    folder = tmp_path / "ro"
    folder.mkdir()
    shutil.copy(made, folder / "t.db")
    if not _immutable(folder / "t.db", folder):
        pytest.skip("needs chattr +i (root ignores permission bits) on this file system")
    try:
        assert resolve_study(f"sqlite:///{folder / 't.db'}") == ("t", f"sqlite:///{folder / 't.db'}")
    finally:
        subprocess.run(["chattr", "-i", str(folder / "t.db"), str(folder)], check=True)


def test_a_wal_database_in_a_read_only_folder_is_one_clear_line(capsys, made, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    shutil.copy(made, folder / "t.db")
    con = sqlite3.connect(folder / "t.db")
    assert con.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    con.close()  # the last connection: -wal and -shm go, the header stays in WAL mode
    before = (folder / "t.db").read_bytes()  # (a read-only SQLite connection would leave a -shm behind)
    assert sorted(p.name for p in folder.iterdir()) == ["t.db"]
    if not _immutable(folder / "t.db", folder):
        pytest.skip("needs chattr +i (root ignores permission bits) on this file system")
    try:
        fails_cleanly(capsys, ["show", "t", "--storage", f"sqlite:///{folder / 't.db'}"], "WAL mode", "writable folder")
    finally:
        subprocess.run(["chattr", "-i", str(folder / "t.db"), str(folder)], check=True)
    assert (folder / "t.db").read_bytes() == before


@pytest.mark.parametrize("value", ["abc", "0", "-5m", "10x"])
def test_bad_timeout_is_refused_before_anything_is_stored(capsys, db, value):
    before = stored(db)
    fails_cleanly(capsys, search_args(db, f"--timeout={value}", study="new"), "--timeout", "e.g. 90m or 8h")
    assert stored(db) == before


def test_a_sampler_whose_package_is_missing_is_refused_before_a_study_is_made(capsys, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cmaes" else real(name, *a))
    db = tmp_path / "c.db"
    fails_cleanly(capsys, search_args(db, "--sampler", "cmaes"), "needs the 'cmaes' package", "nas[cmaes]")
    assert not db.exists()  # no study left behind with a budget fixed for nothing


def test_a_text_study_resumed_on_a_changed_corpus_is_refused(capsys, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(bytes(range(256)) * 8)
    db = tmp_path / "x.db"
    argv = ["search", "--study", "x", "--storage", f"sqlite:///{db}", "--space", "tiny", "--task", "text",
            "--task-option", f"path={corpus}", "--task-option", "seq_len=8", "--latency-ms", "1000",
            "--trials", "1", "--stages", "1"]
    assert main(argv) == 0
    original = corpus.read_bytes()
    corpus.write_bytes(original + b"edited")
    before = stored(db)
    # The study's own corpus hash is checked against the bytes read (the resume keeps its task options).
    fails_cleanly(capsys, with_option(argv, "--trials", "2"), "corpus is not the one expected", "changed since the study was made")
    assert stored(db) == before
    corpus.write_bytes(original)  # restored: the study goes on
    assert main(with_option(argv, "--trials", "2")) == 0



def test_a_corpus_path_is_text_whatever_it_looks_like():
    # Task options are read as JSON (seq_len=8 is a number), but a corpus named 123 or
    # null was taken for the number 123 (refused) or None (the built-in corpus, silently).
    from nas.cli import _task_options

    assert _task_options(["path=123", "seq_len=8", "sha256=0123", "path2=null"]) == {
        "path": "123", "seq_len": 8, "sha256": "0123", "path2": None}
    assert _task_options(["path=null"]) == {"path": "null"}
