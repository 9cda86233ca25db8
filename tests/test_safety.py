"""model.safety: the use/refuse rule for private places (property-tested against the rule as
stated, on generated paths, owners and modes, then on real directories), reads and writes that
never follow a link another user planted."""

from __future__ import annotations

import os
import stat
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ddpcheck.model import safety
from ddpcheck.model.safety import Entry, place_problem

ME, OTHER = 1000, 1001
OWNERS = st.sampled_from([0, ME, OTHER])
PERMS = st.integers(0, 0o7777)
NAMES = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e,
                              blacklist_characters="/"), min_size=1, max_size=8)


def rule_says_use(target: Entry, ancestors: list[Entry], uid: int) -> bool:
    """The rule as the docs state it, written out independently of place_problem."""
    others_write = 0o022
    if not stat.S_ISDIR(target.mode) or target.uid != uid or target.mode & others_write:
        return False
    for entry in ancestors:
        if entry.uid != 0 and entry.uid != uid:
            return False
        if stat.S_ISLNK(entry.mode):
            continue
        if not stat.S_ISDIR(entry.mode):
            return False
        if entry.mode & others_write and not entry.mode & stat.S_ISVTX:
            return False
    return True


@st.composite
def places(draw):
    names = draw(st.lists(NAMES, min_size=1, max_size=5))
    paths = ["/" + "/".join(names[:i]) for i in range(len(names) + 1)]
    kinds = st.sampled_from([stat.S_IFDIR, stat.S_IFDIR, stat.S_IFDIR, stat.S_IFLNK,
                             stat.S_IFREG])
    entries = [Entry(p, draw(OWNERS), draw(kinds) | draw(PERMS)) for p in paths]
    return entries[-1], entries[:-1]


@given(places(), st.sampled_from([0, ME]))
def test_the_decision_matches_the_rule_for_generated_paths_and_modes(place, uid):
    target, ancestors = place
    problem = place_problem(target, ancestors, uid, "workdir")
    assert (problem is None) == rule_says_use(target, ancestors, uid)
    if problem is not None:  # a refusal names the path, and says what to do when not ours
        assert target.path in problem
        if stat.S_ISDIR(target.mode):
            assert "StrictModes" in problem


@given(st.sampled_from([0, ME, OTHER]), PERMS)
def test_a_refusal_of_the_place_itself_names_its_owner_and_mode(owner, perms):
    target = Entry("/tmp/ddpcheck-1000", owner, stat.S_IFDIR | perms, "bob")
    problem = place_problem(target, [Entry("/", 0, stat.S_IFDIR | 0o755),
                                     Entry("/tmp", 0, stat.S_IFDIR | 0o1777)], ME, "workdir")
    if owner != ME or perms & 0o022:
        assert problem is not None
        assert f"bob (uid {owner})" in problem and f"mode {perms:04o}" in problem
    else:
        assert problem is None


def test_the_default_workdir_is_per_user():
    from ddpcheck.model.spec import DEFAULT_WORKDIR

    assert safety.expand_workdir(DEFAULT_WORKDIR, 1234) == "/tmp/ddpcheck-1234"


# -- on real directories ---------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory away needs root")


@needs_root
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(owner=st.sampled_from([0, 65534]), perms=st.integers(0, 0o1777),
       parent_owner=st.sampled_from([0, 65534]), parent_perms=st.integers(0, 0o1777))
def test_check_place_on_real_directories_follows_the_rule(owner, perms, parent_owner,
                                                          parent_perms):
    with tempfile.TemporaryDirectory() as base:  # 0700, root's: a private start
        parent = os.path.join(base, "p")
        place = os.path.join(parent, "w")
        os.makedirs(place)
        for path, uid, mode in ((place, owner, perms), (parent, parent_owner, parent_perms)):
            os.chown(path, uid, uid)
            os.chmod(path, mode)
        problem = safety.check_place(place, uid=0)
        expected = rule_says_use(Entry(place, owner, stat.S_IFDIR | perms),
                                 [Entry(parent, parent_owner, stat.S_IFDIR | parent_perms)], 0)
        assert (problem is None) == expected, problem


def test_make_private_dir_creates_0700_and_refuses_a_link_planted_in_its_place(tmp_path):
    made = safety.make_private_dir(str(tmp_path / "fresh"))
    assert stat.S_IMODE(os.stat(made).st_mode) == 0o700
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(elsewhere)
    if os.geteuid() == 0:
        os.lchown(tmp_path / "link", 65534, 65534)  # planted by another user
        with pytest.raises(safety.UnsafePlace, match="link"):
            safety.make_private_dir(str(tmp_path / "link"))
        os.lchown(tmp_path / "link", 0, 0)
    # a link we made ourselves is followed to a private directory
    assert safety.make_private_dir(str(tmp_path / "link")) == str(elsewhere)


def test_a_group_writable_directory_is_refused_with_what_to_do(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o775)
    with pytest.raises(safety.UnsafePlace) as caught:
        safety.make_private_dir(str(shared), "workdir")
    text = str(caught.value)
    assert text.startswith(f"workdir {shared} is owned by ") and "mode 0775" in text
    assert "writable by group or others" in text and "StrictModes" in text


def test_read_owned_file_reads_only_regular_files_of_the_owner_without_following(tmp_path):
    data = tmp_path / "beat.json"
    data.write_bytes(b'{"step": 3}')
    me = os.geteuid()
    assert safety.read_owned_file(str(data), (me,), 100) == b'{"step": 3}'
    assert safety.read_owned_file(str(data), (me + 1,), 100) is None  # someone else's
    assert safety.read_owned_file(str(data), (me,), 5) is None  # too large
    (tmp_path / "link").symlink_to(data)
    assert safety.read_owned_file(str(tmp_path / "link"), (me,), 100) is None
    os.mkfifo(tmp_path / "fifo")
    assert safety.read_owned_file(str(tmp_path / "fifo"), (me,), 100) is None  # no hang


def test_write_atomically_replaces_the_file_and_keeps_the_umask_mode(tmp_path):
    out = tmp_path / "report.json"
    out.write_text("old")
    safety.write_atomically(str(out), b"new")
    assert out.read_text() == "new"
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


@needs_root
def test_write_atomically_refuses_a_link_another_user_planted(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    out = tmp_path / "report.json"
    out.symlink_to(victim)
    os.lchown(out, 65534, 65534)
    with pytest.raises(safety.UnsafePlace, match="planted by another user"):
        safety.write_atomically(str(out), b"report")
    assert victim.read_text() == "precious" and out.is_symlink()
    os.lchown(out, 0, 0)  # a link we made: followed, the file it names replaced
    safety.write_atomically(str(out), b"report")
    assert victim.read_text() == "report" and out.is_symlink()


def test_the_write_test_never_writes_through_a_planted_link(tmp_path):
    """Stage 0's (and ``ddpcheck node``'s) 1 MiB write test in a shared current directory: a
    link planted at the name it once used is left alone, and so is what it points to."""
    from ddpcheck.remote.agent import workdir_write_test

    victim = tmp_path / "victim"
    victim.write_text("precious")
    shared = tmp_path / "shared"
    shared.mkdir()
    for pid in (os.getpid(), *range(os.getpid() + 1, os.getpid() + 4)):
        (shared / f".ddpcheck-write-test-{pid}").symlink_to(victim)
    assert workdir_write_test(str(shared)) is None
    assert victim.read_text() == "precious"
    assert all(p.is_symlink() for p in shared.iterdir()) and len(list(shared.iterdir())) == 4


@needs_root
def test_known_hosts_append_refuses_a_link_another_user_planted(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    known = tmp_path / "known_hosts"
    known.symlink_to(victim)
    os.lchown(known, 65534, 65534)
    with pytest.raises(safety.UnsafePlace, match="planted by another user"):
        safety.open_append(str(known))
    assert victim.read_text() == "precious\n"
    os.unlink(known)
    fd = safety.open_append(str(known))
    os.write(fd, b"h ssh-ed25519 AAAA\n")
    os.close(fd)
    assert known.read_text() == "h ssh-ed25519 AAAA\n"
    assert stat.S_IMODE(known.stat().st_mode) == 0o600
