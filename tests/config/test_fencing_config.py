"""The [fencing], [nodes.X.fencing] and agent notify/watchdog keys: strict, one line per problem."""

from __future__ import annotations

import pytest

from tests.config.test_config_check import check


def append(cfgdir, text: str):
    path = cfgdir / "cluster.toml"
    path.write_text(path.read_text() + "\n" + text)
    return path


@pytest.mark.parametrize("text,expected", [
    ('[fencing]\nagent = "ipmi"\n', "fencing.agent: Input should be 'exec', 'ipmitool' or 'lab'"),
    ('[fencing]\nagent = "exec"\n', "fencing.command: required when agent = 'exec'"),
    ('[fencing]\nagent = "exec"\ncommand = []\n', "fencing.command: must not be empty"),
    ('[fencing]\nagent = "exec"\ncommand = ["x"]\ntimout = 3\n', "fencing.timout: unknown key"),
    ('[fencing]\nagent = "exec"\ncommand = ["x"]\ntimeout = 0\n', "fencing.timeout: Input should be greater"),
    ('[fencing]\nagent = "ipmitool"\naddress = "10.9.0.1"\nuser = "admin"\n',
     "fencing.password_file: required when agent = 'ipmitool'"),
    ('[fencing]\nagent = "ipmitool"\naddress = "10.9.0.1"\nuser = "admin"\npassword_file = "/p"\n'
     'command = ["x"]\n', "fencing.command: only for agent = 'exec'"),
    ('[fencing]\nagent = "lab"\nlab = "hf1"\n', "fencing.root_netns: required when agent = 'lab'"),
    ('[nodes.node1.fencing]\nagent = "exec"\n', "nodes.node1.fencing.command: required when agent = 'exec'"),
    ('[agent]\nnotify = [[]]\n', "agent.notify: a command must not be empty"),
    ('[agent]\nnotify = "echo hi"\n', "agent.notify: not a list"),
    ('[agent]\nfailure_timeout = 30\nfailure_timeout_max = 20\n',
     "agent: failure_timeout_max (20) is below failure_timeout (30): make it at least as long"),
    ('[agent]\nfailure_reset = 0\n', "agent.failure_reset: Input should be greater than 0"),
    ('[agent]\ncycle_timeout = 5\n', "agent.cycle_timeout: Input should be greater than or equal to 10"),
])
def test_bad_fencing_and_notify_keys_are_named(cfgdir, text, expected):
    code, lines = check(append(cfgdir, text))
    assert code == 2
    assert any(expected in line for line in lines), lines
    assert all(line.startswith("tandem: ") for line in lines)


def bmc_password(cfgdir, mode: int = 0o600):
    pw = cfgdir / "bmc-password"
    pw.write_text("bmc-secret\n")
    pw.chmod(mode)
    return pw


def test_good_fencing_per_node_overrides_the_cluster_wide_one(cfgdir):
    from tandem.config import load_config
    path = append(cfgdir, '[fencing]\nagent = "exec"\ncommand = ["fence-it", "{node}"]\n\n'
                          '[nodes.node2.fencing]\nagent = "ipmitool"\naddress = "10.9.0.12"\nuser = "admin"\n'
                          f'password_file = "{bmc_password(cfgdir)}"\n')
    assert check(path) == (0, ["ok"])
    cfg = load_config(path)
    assert cfg.fencing_for("node1").agent == "exec"
    assert cfg.fencing_for("node2").agent == "ipmitool"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_bmc_password_file_others_can_read_is_refused(cfgdir, mode):
    """ipmitool -f reads it: a password every local user can read is no password."""
    pw = bmc_password(cfgdir, mode)
    path = append(cfgdir, '[nodes.node2.fencing]\nagent = "ipmitool"\naddress = "10.9.0.12"\n'
                          f'user = "admin"\npassword_file = "{pw}"\n')
    assert check(path) == (2, [f"tandem: {path}: nodes.node2.fencing.password_file: {pw} is readable"
                               " by others (chmod 600 it)"])
    pw.chmod(0o600)
    assert check(path) == (0, ["ok"])


def test_a_missing_bmc_password_file_is_left_to_the_node_that_fences(cfgdir):
    """Only the nodes that fence need the BMC password: a witness, or a host that
    runs `tandem status`, loads the same file without it."""
    missing = cfgdir / "no-such-password"
    path = append(cfgdir, f'[fencing]\nagent = "ipmitool"\naddress = "10.9.0.1"\nuser = "admin"\n'
                          f'password_file = "{missing}"\n')
    assert check(path) == (0, ["ok"])


def test_watchdog_enabled_where_there_is_none_is_one_clear_line(cfgdir, tmp_path):
    from tests.conftest import run_tandem
    missing = tmp_path / "no-watchdog"  # this machine has no /dev/watchdog and no softdog module
    path = append(cfgdir, f'[agent]\nwatchdog = "{missing}"\n')
    assert check(path) == (0, ["ok"]), "the key is valid; the device is checked where the agent runs"
    proc = run_tandem("agent", "--config", str(path), "--node", "node1")
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode != 0
    assert lines == [f"tandem: agent.watchdog: {missing} does not exist on this machine (no hardware"
                     " watchdog and softdog not loaded: `modprobe softdog`, or remove agent.watchdog)"]
    not_a_device = tmp_path / "plain-file"
    not_a_device.write_text("")
    path = append(cfgdir, "")
    path.write_text(path.read_text().replace(str(missing), str(not_a_device)))
    proc = run_tandem("agent", "--config", str(path), "--node", "node1")
    assert "is not a character device" in proc.stdout + proc.stderr


def test_the_fencing_example_is_valid(tmp_path):
    from pathlib import Path
    example = Path(__file__).resolve().parents[2] / "examples" / "cluster-fencing.toml"
    pw = bmc_password(tmp_path)
    (tmp_path / "cluster.toml").write_text(example.read_text().replace("/etc/tandem/bmc-password", str(pw)))
    (tmp_path / "secret").write_text("0123456789abcdef0123456789abcdef\n")
    (tmp_path / "secret").chmod(0o600)
    from tests.conftest import run_tandem
    assert run_tandem("pki", "init", "--config", str(tmp_path / "cluster.toml")).returncode == 0
    assert check(tmp_path / "cluster.toml") == (0, ["ok"])
