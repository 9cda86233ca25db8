"""Unit tests for inventories (ddpcheck.config.inventory, --config, load_spec): hostfiles,
-w, SLURM, and that each gives the ClusterSpec the equivalent hosts.yaml gives."""

from __future__ import annotations

import textwrap
from dataclasses import fields

import pytest

from ddpcheck.commands.common import InventoryOptions, load_spec
from ddpcheck.config.hostsyaml import (ConfigDefaults, load_config_defaults, parse_config_defaults,
                             parse_hosts_yaml)
from ddpcheck.model.errors import ConfigError
from ddpcheck.config.inventory import (InventoryEntry, build_cluster, load_hostfile,
                                parse_host_expression, parse_hostfile, slurm_entries)
from ddpcheck.model.spec import Backend, HostKeyPolicy

CONFIG = textwrap.dedent("""\
    defaults:
      user: alice
      python: /opt/venv/bin/python
      env: {GLOO_SOCKET_IFNAME: eth0}
      workdir: /scratch/ddp
    ssh:
      known_hosts: /etc/ddp/known_hosts
      host_key_policy: accept-new
      config: none
    rendezvous:
      master: node02
      port: 29777
    backend: gloo
    """)

# Fields compared between an inventory's spec and the hosts.yaml's (line is where it came from).
COMPARED = [f.name for f in fields(parse_hosts_yaml("hosts: [a]", "x").hosts[0])
            if f.name != "line"]


def same_hosts(left, right) -> None:
    assert [tuple(getattr(h, f) for f in COMPARED) for h in left.hosts] == \
        [tuple(getattr(h, f) for f in COMPARED) for h in right.hosts]
    for attr in ("ssh", "master", "rendezvous_port", "backend", "local"):
        assert getattr(left, attr) == getattr(right, attr), attr


@pytest.mark.parametrize("text, expected", [
    # DeepSpeed
    ("node01 slots=8\nnode02 slots=8\n", [("node01", 8, 1), ("node02", 8, 2)]),
    # OpenMPI: comments, blank lines, max_slots, a bare host
    ("# the cluster\n\nnode01 slots=4 max_slots=8   # big one\n  node02\n",
     [("node01", 4, 3), ("node02", None, 4)]),
    # MPICH
    ("node01:2\nnode02:4\n", [("node01", 2, 1), ("node02", 4, 2)]),
    # pdsh ranges in a hostfile name
    ("gpu[01-03] slots=8\n", [("gpu01", 8, 1), ("gpu02", 8, 1), ("gpu03", 8, 1)]),
    # an IPv6 literal is a host, not MPICH's host:N
    ("fe80::1 slots=2\n10.0.0.2:3\n", [("fe80::1", 2, 1), ("10.0.0.2", 3, 2)]),
    ("node01 slots=2\r\nnode02 slots=2\r\n", [("node01", 2, 1), ("node02", 2, 2)]),
    # OpenMPI: a bare host repeated N times has N slots; "slots = 4"; count/cpu are slots
    ("n1\nn2 slots = 4\nn1\nn1\nn3 cpu=2\nn4 count=3\n",
     [("n1", 3, 1), ("n2", 4, 2), ("n3", 2, 5), ("n4", 3, 6)]),
])
def test_hostfile_forms(text: str, expected) -> None:
    entries = parse_hostfile(text, "hostfile")
    assert [(e.name, e.slots, e.line) for e in entries] == expected


@pytest.mark.parametrize("text, where, words", [
    ("node01 slots=8\nnode02 slots=0\n", "hostfile:2", "slots must be an integer >= 1"),
    ("node01 slots=eight\n", "hostfile:1", "got 'eight'"),
    ("node01 slot=8\n", "hostfile:1", "unknown key 'slot'"),
    ("node01 8\n", "hostfile:1", "expected key=value"),
    ("node01 slots=2 slots=3\n", "hostfile:1", "slots given twice"),
    ("node01:x\n", "hostfile:1", "got 'x'"),
    ("node01:2 slots=2\n", "hostfile:1", "MPICH form"),
    ("\n\nnode[01-\n", "hostfile:3", "bad host name"),
    ("# nothing\n\n", "hostfile", "no hosts"),
])
def test_hostfile_errors_name_file_and_line(text: str, where: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_hostfile(text, "hostfile")
    assert str(caught.value).startswith(where + ":") and words in str(caught.value)


def test_hostfile_second_slot_count_names_both_lines(tmp_path) -> None:
    path = tmp_path / "hostfile"
    path.write_text("n1 slots=2\nn2 slots=2\nn1 slots=2\n")
    with pytest.raises(ConfigError) as caught:
        load_hostfile(path, ConfigDefaults(host_fields={}))
    assert str(caught.value).startswith(f"{path}:3: 'n1' already has its slots (line 1)")


def test_hostfile_user_at_host_sets_the_user(tmp_path) -> None:
    path = tmp_path / "hostfile"
    path.write_text("alice@n1 slots=2\nn2\nn1\n")
    spec = load_hostfile(path, ConfigDefaults(host_fields={}))
    assert [(h.name, h.user, h.slots, "user" in h.given) for h in spec.hosts] == [
        ("n1", "alice", 3, True), ("n2", None, None, False)]


def test_hostfile_and_w_give_the_hosts_yaml_spec(tmp_path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    defaults = load_config_defaults(config)
    yaml_spec = parse_hosts_yaml(CONFIG + textwrap.dedent("""\
        hosts:
          - {name: node01, slots: 8}
          - {name: node02, slots: 8}
          - node03
        """), "hosts.yaml")
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node01 slots=8\nnode02 slots=8\nnode03\n")
    same_hosts(load_hostfile(hostfile, defaults), yaml_spec)

    plain = parse_hosts_yaml(CONFIG + "hosts: ['node[01-03]']\n", "hosts.yaml")
    from_w = build_cluster(parse_host_expression("node[01-02],node03"), defaults, "-w")
    same_hosts(from_w, plain)
    assert from_w.ssh.host_key_policy is HostKeyPolicy.ACCEPT_NEW
    assert from_w.ssh.config_file == "none" and from_w.backend is Backend.GLOO
    assert from_w.master_host.name == "node02" and from_w.rendezvous_port == 29777
    assert from_w.source == "-w"


def test_defaults_slots_apply_unless_the_inventory_gives_slots() -> None:
    defaults = parse_config_defaults("defaults: {slots: 4}\n", "c.yaml")
    spec = build_cluster([InventoryEntry("a"), InventoryEntry("b", 2)], defaults, "x")
    assert [h.slots for h in spec.hosts] == [4, 2]


def test_config_with_hosts_is_rejected_naming_the_line() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config_defaults("backend: gloo\nhosts: [a]\n", "c.yaml")
    assert str(caught.value).startswith("c.yaml:2: hosts: a --config file gives only")


def test_config_errors_keep_file_line_key() -> None:
    with pytest.raises(ConfigError, match=r"^c.yaml:2: defaults.slots: must be an integer"):
        parse_config_defaults("defaults:\n  slots: 0\n", "c.yaml")
    with pytest.raises(ConfigError, match=r"^c.yaml:1: hostz: unknown key at the top level"):
        parse_config_defaults("hostz: 1\n", "c.yaml")
    assert parse_config_defaults("", "c.yaml").host_fields == {}


def test_master_not_in_inventory_names_the_config_line() -> None:
    defaults = parse_config_defaults(CONFIG, "c.yaml")
    with pytest.raises(ConfigError) as caught:
        build_cluster(parse_host_expression("node[05-06]"), defaults, "-w node[05-06]")
    assert str(caught.value).startswith("c.yaml:11: rendezvous.master: 'node02' is not one")


def test_w_expression_errors_name_the_option() -> None:
    with pytest.raises(ConfigError, match=r"^-w: bad hostlist 'n\[1-': unclosed"):
        parse_host_expression("n[1-")
    entries = parse_host_expression(["n[1-2]", "m1"])
    assert [e.name for e in entries] == ["n1", "n2", "m1"]


def test_slurm_entries_from_the_environment() -> None:
    entries, source = slurm_entries({"SLURM_JOB_NODELIST": "gpu[001-002,010]",
                                     "SLURM_TASKS_PER_NODE": "2(x2),1", "SLURM_JOB_ID": "9"})
    assert [(e.name, e.slots) for e in entries] == [("gpu001", 2), ("gpu002", 2), ("gpu010", 1)]
    assert source == "SLURM job 9 (gpu[001-002,010])"
    with pytest.raises(ConfigError, match=r"^--slurm: SLURM_TASKS_PER_NODE: "):
        slurm_entries({"SLURM_JOB_NODELIST": "n[1-2]", "SLURM_TASKS_PER_NODE": "2(x3)"})


def args(**given) -> InventoryOptions:
    base = dict(hosts=None, hostfile=None, slurm=False, hostlist=None, config=None,
                ssh_config="none", launcher="ssh")
    return InventoryOptions(**{**base, **given})


def test_load_spec_from_args_picks_one_inventory(tmp_path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    spec = load_spec(args(hostlist=["node[01-02]"], config=str(config)))
    assert [h.name for h in spec.hosts] == ["node01", "node02"]
    assert [h.user for h in spec.hosts] == ["alice", "alice"]
    assert spec.source == "-w node[01-02]"
    assert load_spec(args()).local
    env = {"SLURM_JOB_NODELIST": "node[01-03]", "SLURM_JOB_ID": "5", "USER": "bob"}
    slurm = load_spec(args(slurm=True, config=str(config)), env)
    assert [h.name for h in slurm.hosts] == ["node01", "node02", "node03"]
    under_srun = load_spec(args(launcher="slurm", config=str(config)), env)
    assert [h.name for h in under_srun.hosts] == ["node01", "node02", "node03"]


@pytest.mark.parametrize("given, words", [
    (dict(hosts="h.yaml", hostlist=["a"]), "give one inventory, not HOSTS and -w"),
    (dict(hostfile="f", slurm=True), "not --hostfile and --slurm"),
    (dict(hosts="h.yaml", config="c.yaml"), "HOSTS is a complete hosts.yaml"),
    (dict(config="c.yaml"), "--config needs an inventory"),
])
def test_load_spec_from_args_rejects_mixtures(given, words) -> None:
    with pytest.raises(ConfigError, match="^command line: ") as caught:
        load_spec(args(**given))
    assert words in str(caught.value)


def test_example_hostfile_and_defaults_parse() -> None:
    from pathlib import Path

    configs = Path(__file__).resolve().parents[1] / "configs"
    spec = load_hostfile(configs / "hostfile.example",
                         load_config_defaults(configs / "defaults.example.yaml"))
    assert [(h.name, h.slots, h.python) for h in spec.hosts] == [
        ("node01", 8, "/opt/venv/bin/python"), ("node02", 8, "/opt/venv/bin/python"),
        ("node03", 4, "/opt/venv/bin/python")]


def ddpcheck_cli(*argv: str, env=None):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "ddpcheck", *argv], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


def test_cli_bad_inventory_exits_2_naming_file_and_line(tmp_path) -> None:
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("n1 slots=2\nn2 slots=two\n")
    done = ddpcheck_cli("preflight", "--hostfile", str(hostfile), "--json",
                        str(tmp_path / "r.json"))
    assert done.returncode == 2 and done.stdout == ""
    assert f"{hostfile}:2: slots must be an integer >= 1" in done.stderr
    assert "Traceback" not in done.stderr
    done = ddpcheck_cli("preflight", "-w", "n[1-", "--dry-run")
    assert done.returncode == 2 and "-w: bad hostlist 'n[1-'" in done.stderr


def test_cli_launcher_slurm_outside_an_allocation_and_its_dry_run(tmp_path) -> None:
    outside = {k: "" for k in ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_NODELIST")}
    done = ddpcheck_cli("preflight", "--launcher", "slurm", "-w", "n[1-2]", env=outside)
    assert done.returncode == 2 and "SLURM_JOB_ID is not set" in done.stderr
    done = ddpcheck_cli("preflight", "--launcher", "slurm", env=outside)
    assert done.returncode == 2 and "SLURM_JOB_NODELIST: not set" in done.stderr
    inside = {"SLURM_JOB_ID": "12", "SLURM_JOB_NODELIST": "gpu[01-02]",
              "SLURM_GPUS_PER_NODE": "a100:4"}
    done = ddpcheck_cli("preflight", "--launcher", "slurm", "--dry-run", env=inside)
    assert done.returncode == 0, done.stderr
    assert "from SLURM job 12 (gpu[01-02])" in done.stdout
    assert "'--nodelist=gpu[01-02]'" in done.stdout and "--slurm-slots 4,4" in done.stdout
