"""Unit tests for ddpcheck.plan.cmdlines: golden commands, quoting, backend/slot resolution."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from goldenfile import check_golden

from ddpcheck.plan.cmdlines import (LaunchOptions, plan_launch, remote_command, resolve_backend,
                           resolve_slots, stage0_command)
from ddpcheck.model.spec import Backend, ClusterSpec, HostSpec

HOSTILE = "$(touch /tmp/pwned); echo x"


def make_spec(master: str = "") -> ClusterSpec:
    hosts = (
        HostSpec(name="node-a", address="10.0.0.1", python="/opt/py/bin/python3",
                 env={"NCCL_DEBUG": "INFO", "EVIL": HOSTILE}, workdir="/tmp/ddp work"),
        HostSpec(name="node-b", address="10.0.0.2", user="alice", port=2222,
                 env={"OMP_NUM_THREADS": "4"}, workdir="/scratch/ddp", slots=2),
        HostSpec(name="node-c", address="node-c.example.org"),
    )
    return ClusterSpec(hosts=hosts, master=master, rendezvous_port=29511)


SLOTS = {"node-a": 1, "node-b": 2, "node-c": 3}


def render_launches(launches) -> str:
    return "".join(f"# {l.host} node_rank={l.node_rank} slots={l.slots}\n{l.command}\n"
                   for l in launches)


def test_plan_launch_golden():
    launches = plan_launch(make_spec(), SLOTS, Backend.GLOO,
                           LaunchOptions(deadline_s=90.5, rendezvous_timeout_s=15,
                                         collective_timeout_s=20, iterations=7),
                           run_id="run-123")
    check_golden("plan_launch.txt", render_launches(launches))


def test_plan_launch_default_options_golden():
    launches = plan_launch(make_spec(master="node-b"), SLOTS, Backend.NCCL)
    check_golden("plan_launch_master_b.txt", render_launches(launches))


def test_stage0_golden():
    text = "".join(f"# {h.name}\n{stage0_command(h, 30.0)}\n" for h in make_spec().hosts)
    check_golden("stage0.txt", text)


def test_hostile_env_value_is_one_quoted_token():
    host = make_spec().hosts[0]
    for command in (stage0_command(host, 30), plan_launch(make_spec(), SLOTS, Backend.GLOO)[0].command):
        tokens = shlex.split(command)
        assert f"EVIL={HOSTILE}" in tokens
        assert "NCCL_DEBUG=INFO" in tokens
        assert "PYTHONUNBUFFERED=1" in tokens
        # the interpreter starts in /; the workdir with a space stays one token for the agent
        assert tokens[:5] == ["cd", "/", "&&", "exec", "env"]
        assert "DDPCHECK_WORKDIR=/tmp/ddp work" in tokens
        assert "$(" not in command.replace(shlex.quote(f"EVIL={HOSTILE}"), "")


def test_stage0_argv_tail():
    host = make_spec().hosts[0]
    tokens = shlex.split(stage0_command(host, 12.5))
    assert tokens[-8:] == ["/opt/py/bin/python3", "-m", "ddpcheck.remote.agent", "facts",
                           "--deadline", "12.5", "--torch", "inspect"]
    assert "exec" in tokens and tokens[tokens.index("exec") + 1] == "env"


def test_hostile_command_does_not_execute(tmp_path):
    pwned = tmp_path / "pwned"
    evil = f"$(touch {pwned}); echo x `touch {pwned}` ; touch {pwned}"
    workdir = tmp_path / "work dir; touch pwned2"
    host = HostSpec(name="h", address="h", env={"EVIL": evil}, workdir=str(workdir))
    result = subprocess.run(["/bin/sh", "-c", remote_command(host, ["true"])],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert not pwned.exists()
    assert not Path("pwned2").exists()
    assert not workdir.exists()  # the shell makes nothing: the agent makes it, privately

    # and the values reach the program byte for byte, which starts in /
    probe = ["/bin/sh", "-c", 'printf "%s|%s|%s" "$EVIL" "$DDPCHECK_WORKDIR" "$PWD"']
    result = subprocess.run(["/bin/sh", "-c", remote_command(host, probe)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{evil}|{workdir}|/"
    assert not pwned.exists()


def test_extra_env_overrides_host_env_and_base():
    host = HostSpec(name="h", address="h", env={"A": "host", "PYTHONUNBUFFERED": "0"})
    tokens = shlex.split(remote_command(host, ["true"], {"A": "extra"}))
    assert "A=extra" in tokens and "A=host" not in tokens
    assert "PYTHONUNBUFFERED=0" in tokens and "PYTHONUNBUFFERED=1" not in tokens


def _torchrun_opt(command: str, flag: str) -> str:
    tokens = shlex.split(command)
    return tokens[tokens.index(flag) + 1]


def test_node_ranks_nnodes_and_master_first_host():
    spec = make_spec()
    launches = plan_launch(spec, SLOTS, Backend.GLOO)
    assert [l.host for l in launches] == ["node-a", "node-b", "node-c"]
    assert [l.node_rank for l in launches] == [0, 1, 2]
    assert [l.slots for l in launches] == [1, 2, 3]
    for l in launches:
        assert _torchrun_opt(l.command, "--node-rank") == str(l.node_rank)
        assert _torchrun_opt(l.command, "--nnodes") == "3"
        assert _torchrun_opt(l.command, "--nproc-per-node") == str(l.slots)
        assert _torchrun_opt(l.command, "--master-addr") == "10.0.0.1"
        assert _torchrun_opt(l.command, "--master-port") == "29511"
        assert _torchrun_opt(l.command, "--expected-world-size") == "6"
        assert _torchrun_opt(l.command, "--backend") == "gloo"
        assert _torchrun_opt(l.command, "--host") == l.host
        assert "--rdzv-id" not in shlex.split(l.command)


def test_master_set_to_second_host():
    launches = plan_launch(make_spec(master="node-b"), SLOTS, Backend.NCCL,
                           run_id="abc")
    # node ranks still follow host order; only the address changes
    assert [l.node_rank for l in launches] == [0, 1, 2]
    for l in launches:
        assert _torchrun_opt(l.command, "--master-addr") == "10.0.0.2"
        assert _torchrun_opt(l.command, "--backend") == "nccl"
        assert _torchrun_opt(l.command, "--rdzv-id") == "abc"


def test_unknown_master_falls_back_to_first_host():
    launches = plan_launch(make_spec(master="nope"), SLOTS, Backend.GLOO)
    assert _torchrun_opt(launches[2].command, "--master-addr") == "10.0.0.1"


def test_resolve_backend():
    assert resolve_backend(Backend.AUTO, {"a": 1, "b": 8}) is Backend.NCCL
    assert resolve_backend(Backend.AUTO, {"a": 1, "b": 0}) is Backend.GLOO
    assert resolve_backend(Backend.AUTO, {}) is Backend.GLOO
    assert resolve_backend(Backend.GLOO, {"a": 4}) is Backend.GLOO
    assert resolve_backend(Backend.NCCL, {"a": 0}) is Backend.NCCL


def test_resolve_slots():
    given = HostSpec(name="h", address="h", slots=3)
    plain = HostSpec(name="h", address="h")
    assert resolve_slots(given, 8, local=False) == 3
    assert resolve_slots(given, 0, local=True) == 3
    assert resolve_slots(plain, 4, local=False) == 4
    assert resolve_slots(plain, 4, local=True) == 4
    assert resolve_slots(plain, 0, local=False) == 1
    assert resolve_slots(plain, 0, local=True) == 2


# -- property: every value is one quoted word, whatever it holds --------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ddpcheck.plan.cmdlines import EXEC_AS_GIVEN, global_ranks, stage0_argv  # noqa: E402

# Any text a YAML file or a command line can carry to us (no NUL, no lone surrogate): quotes,
# $(...), backticks, ;, &&, newlines, globs, leading dashes, "=" included.
_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                max_size=40)
_NASTY = st.sampled_from(["$(touch pwned)", "`id`", "a;b", "x' y", '"', "\\", "*", "~",
                          "-rf", "a=b", "\n", "$HOME", "&& true", "|", "#c", ""])
_VALUE = st.one_of(_TEXT, _NASTY, st.lists(st.one_of(_TEXT, _NASTY), max_size=4).map("".join))
_NAME = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)


def _expected_tokens(host: HostSpec, argv: list[str], extra_env: dict) -> list[str]:
    env = {"PYTHONUNBUFFERED": "1", "PYTHONSAFEPATH": "1", **host.env, **extra_env,
           "DDPCHECK_WORKDIR": host.workdir}
    program = [*EXEC_AS_GIVEN, *argv] if "=" in argv[0] else argv
    return ["cd", "/", "&&", "exec", "env", *[f"{k}={v}" for k, v in env.items()], *program]


@settings(max_examples=300, deadline=None)
@given(env=st.dictionaries(_NAME, _VALUE, max_size=4), extra=st.dictionaries(_NAME, _VALUE,
                                                                              max_size=2),
       workdir=_VALUE, python=_VALUE.filter(bool), argv=st.lists(_VALUE, max_size=5))
def test_remote_command_splits_back_to_exactly_the_intended_words(env, extra, workdir, python,
                                                                  argv):
    host = HostSpec(name="h", address="h", python=python, env=env, workdir="/" + workdir)
    command = remote_command(host, [python, *argv], extra)
    assert shlex.split(command) == _expected_tokens(host, [python, *argv], extra)
    for line in (stage0_command(host, 30.0),):
        assert shlex.split(line) == _expected_tokens(host, stage0_argv(host, 30.0), {})


_SEGMENT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0/"),
                   min_size=1, max_size=20).filter(lambda s: s not in (".", ".."))


@settings(max_examples=40, deadline=None)
@given(value=_VALUE, segment=_SEGMENT, args=st.lists(_VALUE, max_size=3))
def test_a_real_shell_passes_every_value_byte_for_byte_and_runs_nothing(tmp_path_factory,
                                                                       value, segment, args):
    """Run by /bin/sh as sshd would: the program (started in /) sees the workdir, the env
    value and its arguments exactly, and nothing in them was executed."""
    base = tmp_path_factory.mktemp("shell")
    host = HostSpec(name="h", address="h", env={"DDPCHECK_VALUE": value},
                    workdir=str(base / segment))
    show = 'printf "%s\\0" "$PWD" "$DDPCHECK_WORKDIR" "$DDPCHECK_VALUE" "$@"'
    done = subprocess.run(["/bin/sh", "-c", remote_command(host, ["/bin/sh", "-c", show, "sh",
                                                                  *args])],
                          capture_output=True, timeout=30, cwd=base)
    assert done.returncode == 0, done.stderr
    words = done.stdout.decode("utf-8", "surrogateescape").split("\0")[:-1]
    assert words == ["/", str(base / segment), value, *args]
    assert not (base / "pwned").exists() and not Path("pwned").exists()


def test_python_path_with_an_equals_sign_is_run_not_read_as_an_assignment(tmp_path):
    folder = tmp_path / "opt=1" / "bin"
    folder.mkdir(parents=True)
    (folder / "python").symlink_to("/bin/sh")
    host = HostSpec(name="h", address="h", python=str(folder / "python"),
                    env={"A": "b=c"}, workdir=str(tmp_path / "work"))
    command = remote_command(host, [host.python, "-c", 'echo "ran with A=$A"'])
    assert f"sh -c 'exec \"$0\" \"$@\"' {folder / 'python'}" in command
    done = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True,
                          timeout=30)
    assert (done.returncode, done.stdout) == (0, "ran with A=b=c\n"), done.stderr


def test_remote_command_refuses_what_no_command_line_can_carry():
    host = HostSpec(name="h", address="h")
    with pytest.raises(ValueError, match="NUL"):
        remote_command(host, ["python3"], {"A": "x\0y"})
    with pytest.raises(ValueError, match="variable name"):
        remote_command(host, ["python3"], {"A=B": "x"})
    with pytest.raises(ValueError, match="nothing to run"):
        remote_command(host, [])


def test_global_ranks_follow_node_order_and_slots():
    hosts = make_spec().hosts
    assert global_ranks(hosts, SLOTS) == {"node-a": (0,), "node-b": (1, 2),
                                          "node-c": (3, 4, 5)}


def test_launch_runs_in_its_own_run_dir_kept_only_with_keep():
    spec = make_spec()
    plain = shlex.split(plan_launch(spec, SLOTS, Backend.GLOO, run_id="abc")[0].command)
    kept = shlex.split(plan_launch(spec, SLOTS, Backend.GLOO, LaunchOptions(keep=True),
                                   run_id="abc")[0].command)
    assert plain[plain.index("--run-dir") + 1] == "ddpcheck-abc" and "--keep" not in plain
    assert kept.index("--keep") < kept.index("--")


def test_printed_commands_hide_secret_looking_values_and_nothing_else():
    from ddpcheck.commands.preflight import dry_run_text
    from ddpcheck.plan.cmdlines import redact_secrets
    from ddpcheck.engine.preflight import PreflightOptions

    plain = make_spec().hosts[0]
    command = remote_command(plain, ["python3", "-c", "pass"])
    assert redact_secrets(command) == command  # byte for byte: still the exact command
    secret = HostSpec(name="s", address="s", env={"WANDB_API_KEY": "wb-12345-secret",
                                                  "HF_TOKEN": "hf_abcdef", "NCCL_DEBUG": "INFO"})
    shown = redact_secrets(remote_command(secret, ["python3", "-c", "pass"]))
    assert "wb-12345-secret" not in shown and "hf_abcdef" not in shown
    assert "WANDB_API_KEY=***" in shown and "HF_TOKEN=***" in shown
    assert "NCCL_DEBUG=INFO" in shown and shown.startswith("cd / && exec env")
    assert "'DDPCHECK_WORKDIR=/tmp/ddpcheck-{uid}'" in shown
    text = dry_run_text(ClusterSpec(hosts=(secret,)), PreflightOptions())
    assert "wb-12345-secret" not in text and "hf_abcdef" not in text
