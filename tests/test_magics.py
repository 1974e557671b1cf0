"""The %kp magics in an IPython shell: usage errors, no bridge, start/join/stop of a real
background bridge, %%kp and push/pull against its real worker kernels."""

import os

import psutil
import pytest
from IPython.core.error import UsageError
from IPython.testing.globalipapp import start_ipython

import kernelpit
from conftest import kernel_processes, wait_until


@pytest.fixture(scope="module")
def ip(tmp_path_factory):
    runtime = tmp_path_factory.mktemp("magics-runtime")
    old = os.environ.get("JUPYTER_RUNTIME_DIR")
    os.environ["JUPYTER_RUNTIME_DIR"] = str(runtime)
    shell = start_ipython()
    shell.run_line_magic("load_ext", "kernelpit")
    yield shell
    try:
        shell.run_line_magic("kp", "stop --grace 2")
    except UsageError:
        pass
    shell.run_line_magic("unload_ext", "kernelpit")
    os.environ["JUPYTER_RUNTIME_DIR"] = old


def test_usage_and_argument_errors(ip, capsys):
    ip.run_line_magic("kp", "")
    assert "%kp SUBCOMMAND" in capsys.readouterr().out
    with pytest.raises(UsageError, match="unknown subcommand 'bogus'"):
        ip.run_line_magic("kp", "bogus")
    with pytest.raises(UsageError, match="usage: %kp call"):
        ip.run_line_magic("kp", "call")
    with pytest.raises(UsageError, match="invalid int value"):
        ip.run_line_magic("kp", "start --workers many")
    with pytest.raises(UsageError, match="usage: %kp attach"):
        ip.run_line_magic("kp", "attach")


def test_no_bridge_says_how_to_start_one(ip):
    for line in ("status", "tools", "call add a=1", "attach 1"):
        with pytest.raises(UsageError, match=r"no Kernelpit bridge is running.*%kp start --adapter"):
            ip.run_line_magic("kp", line)
    with pytest.raises(UsageError, match="nothing to serve"):
        ip.run_line_magic("kp", "start")


def test_start_call_cell_push_pull_stop(ip, capsys):
    ip.run_line_magic("kp", "start --adapter kernelpit.kernels.demo --workers 1")
    out = capsys.readouterr().out
    assert "started a Kernelpit bridge" in out and "with 1 workers" in out
    stops = ("it stops by itself after 30 min with no calls and no connected notebook; "
             "`%kp stop` stops it now")
    assert stops in out
    with kernelpit.connect() as client:
        info = client.server_info()
        run_id = client.run_id
    bridge = psutil.Process(info.pid)
    assert os.getsid(info.pid) == info.pid  # its own session: not tied to this "notebook"
    assert "--idle-timeout" in bridge.cmdline()  # what the message says is what it runs with
    assert bridge.cmdline()[bridge.cmdline().index("--idle-timeout") + 1] == "1800"

    ip.run_line_magic("kp", "start --adapter other")   # joins, does not start a second one
    out = capsys.readouterr().out
    assert f"joined the running Kernelpit bridge at {info.address}" in out and stops in out

    assert ip.run_line_magic("kp", "call add a=2 b=40") == 42
    assert ip.run_line_magic("kp", "call train epochs=2 seconds_per_epoch=0.01") == \
        {"epochs": 2, "loss": 0.36}

    ip.run_cell_magic("kp", "--session s1", "import os\nx = 21\nprint('in', os.getpid())")
    out = capsys.readouterr().out
    worker_pid = int(out.split("in ")[-1].split()[0])
    assert worker_pid in {p.pid for p in kernel_processes(run_id)}
    ip.user_ns["blob"] = {"data": b"\x00\x01", "items": (1, None)}
    ip.run_line_magic("kp", "push blob --session s1")
    ip.run_cell_magic("kp", "--session s1", "y = x * 2\nblob['data'] += b'!'")
    ip.run_line_magic("kp", "pull y blob --session s1")
    assert ip.user_ns["y"] == 42 and ip.user_ns["blob"] == {"data": b"\x00\x01!",
                                                          "items": (1, None)}
    with pytest.raises(UsageError, match="no variable 'nope'"):
        ip.run_line_magic("kp", "pull nope --session s1")
    ip.user_ns["gen"] = (i for i in range(3))
    with pytest.raises(UsageError, match="gen is a generator, which cannot be moved"):
        ip.run_line_magic("kp", "push gen --session s1")

    ip.run_line_magic("kp", "attach 1")
    assert capsys.readouterr().out.splitlines()[-1].startswith("jupyter console --existing ")

    ip.run_line_magic("kp", "stop")
    assert "stopped the Kernelpit bridge" in capsys.readouterr().out
    assert not bridge.is_running() or bridge.status() == psutil.STATUS_ZOMBIE
    wait_until(lambda: not kernel_processes(run_id), timeout=20)


def test_start_idle_timeout_option(ip):
    from kernelpit.widgets import bridgeproc
    for seconds, flag in ((0, "0"), (90, "90"), (1800.0, "1800")):
        cmd = bridgeproc.serve_command(["m"], None, None, idle_timeout=seconds)
        assert cmd[cmd.index("--idle-timeout") + 1] == flag
    assert bridgeproc.stop_policy(0) == "it runs until `%kp stop` (no idle timeout)"
    assert bridgeproc.stop_policy(90).startswith("it stops by itself after 90 s with no calls")
    with pytest.raises(UsageError, match="--idle-timeout must be seconds >= 0"):
        ip.run_line_magic("kp", "start --adapter m --idle-timeout -1")
