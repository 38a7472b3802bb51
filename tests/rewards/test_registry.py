"""Plug-in routes: built-in name, dotted path, file path, installed entry point; duplicates refused."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rewards import Verdict, get_verifier, list_verifiers, register_verifier

PLUGIN = Path(__file__).parent / "plugins" / "slow_check.py"


def test_import_rewards_does_not_import_torch():
    code = "import sys, rewards; rewards.get_verifier('exact'); rewards.get_verifier('math'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_file_path_and_float_normalisation():
    v = get_verifier(f"{PLUGIN}:length_score")
    assert v("12345", "") == Verdict(0.5, "ok")
    assert v("", "").status == "wrong"


def test_dotted_path():
    v = get_verifier("rewards.exact:verify")
    assert v("3", "3").status == "ok"


def test_raising_verifier_becomes_error_verdict():
    v = get_verifier(f"{PLUGIN}:boom")
    assert v("x", "y").status == "error" and "verifier bug" in v("x", "y").info["exception"]


def test_unknown_name_lists_close_matches():
    with pytest.raises(KeyError, match="Did you mean 'exact'"):
        get_verifier("exakt")


def test_duplicate_name_refused():
    @register_verifier("test_dup_name")
    def first(completion, answer, **row):
        return 1.0

    register_verifier("test_dup_name")(first)  # the same object again is fine

    def second(completion, answer, **row):
        return 0.0

    with pytest.raises(ValueError, match="already registered"):
        register_verifier("test_dup_name")(second)
    with pytest.raises(ValueError, match="already registered"):
        register_verifier("exact")(second)


def test_installed_entry_point(tmp_path):
    pkg = tmp_path / "acme_checks"
    (pkg / "acme_checks").mkdir(parents=True)
    (pkg / "acme_checks" / "__init__.py").write_text(textwrap.dedent('''
        def sql_exec(completion, answer, **row):
            return 1.0 if completion.strip().upper() == answer.strip().upper() else 0.0
    '''))
    (pkg / "pyproject.toml").write_text(textwrap.dedent('''
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "acme-checks"
        version = "0.0.1"
        [project.entry-points."align.verifiers"]
        sql_exec = "acme_checks:sql_exec"
    '''))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q", "--target",
                    str(target), str(pkg)], check=True, capture_output=True)
    code = textwrap.dedent(f'''
        import sys; sys.path.insert(0, {str(target)!r})
        from rewards import get_verifier, list_verifiers
        v = get_verifier("sql_exec")
        print(v("select 1", "SELECT 1").status, v("select 2", "SELECT 1").status)
        print(any(n == "sql_exec" and "entry point" in o for n, o in list_verifiers()))
    ''')
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ok", "wrong", "True"]


def test_list_verifiers_has_builtins_with_origin():
    names = dict(list_verifiers())
    for name in ("exact", "math", "think_format", "code", "instructions", "retrieval", "overlong", "repetition"):
        assert name in names and f"rewards/{name}.py" in names[name]
