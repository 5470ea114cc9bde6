"""`python3 -m handover_worker` before it talks to a supervisor: app loading and misuse."""

import subprocess
import sys

import pytest

from supervisor import APPS


def run(*args, env_channel=True):
    env = {"PATH": "/usr/bin:/bin"}
    if env_channel:
        env["HANDOVER_CHANNEL_FD"] = "99"  # never reached: the app fails first
    return subprocess.run([sys.executable, "-m", "handover_worker", *args], cwd=APPS, env=env,
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_syntax_error_exits_4_with_file_line_and_caret(kind):
    r = run(kind, "broken_app:app")
    assert r.returncode == 4, r.stderr
    assert "broken_app.py\", line 3" in r.stderr and "SyntaxError: expected ':'" in r.stderr
    assert "importlib" not in r.stderr, "no import machinery in the traceback"
    assert r.stderr.rstrip().endswith("(%s/broken_app.py, line 3)" % APPS)


def test_missing_module_and_attribute():
    r = run("wsgi", "no_such_module:app")
    assert r.returncode == 4 and "no module named 'no_such_module'" in r.stderr, r.stderr
    r = run("wsgi", "flask_app:nothing")
    assert r.returncode == 4 and "module 'flask_app' has no attribute 'nothing'" in r.stderr, r.stderr


def test_outside_the_supervisor_says_how_to_run_it():
    r = run("wsgi", "flask_app:app", env_channel=False)
    assert r.returncode == 5, r.stderr
    assert "handover serve -l tcp://127.0.0.1:8080 -w 4 -- python3 -m handover_worker wsgi flask_app:app" in r.stderr


def test_usage_error_exits_2():
    assert run("wsgi", "flask_app:app", "--threads", "0").returncode == 2
