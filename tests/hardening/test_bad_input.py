"""Bad input: odd or hostile kernelspec values and CLI arguments are used literally or refused with
a named error, and no shell ever interprets one.

Values carry shell fragments that would create CANARY (an absolute path in a temporary
directory) if any shell, `sh -c`, `eval` or the container runtime's environment evaluation
read them; every test ends by checking that CANARY does not exist.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import shutil
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from jupyter_client import AsyncKernelManager, AsyncMultiKernelManager
from kernel_helpers import run_cell
from traitlets import TraitError

from kernelprovider.app import InstallApp, KernelProviderApp, name_from_image
from kernelprovider.apptainer import (
    Bind,
    build_exec_argv,
    check_image,
    container_env,
    parse_bind,
)
from kernelprovider.errors import ImageNotFound, InvalidBind, KernelProviderError
from kernelprovider.kernelspec import build_kernelspec, install_kernelspec, valid_kernel_name
from kernelprovider.provisioner import ContainerProvisioner
from kernelprovider.slurm import (
    SlurmProvisioner,
    batch_script,
    build_sbatch_argv,
    build_srun_argv,
)

# Only named here (the strategies embed it); created and removed by the _canary_dir fixture.
CANARY_DIR = Path(tempfile.gettempdir()) / f"kp-canary-{os.getpid()}-{secrets.token_hex(4)}"
CANARY = CANARY_DIR / "CANARY"

#: Fragments that do something in some shell; a value made of them must stay text.
INJECTIONS = [
    f"$(touch {CANARY})",
    f"`touch {CANARY}`",
    f"; touch {CANARY}",
    f"&& touch {CANARY} #",
    f"| touch {CANARY}",
    f"\ntouch {CANARY}\n",
    f"' ; touch {CANARY} ; '",
    f'" ; touch {CANARY} ; "',
    f"$'\\n'touch {CANARY}",
    f"${{IFS}}touch${{IFS}}{CANARY}",
    "${HOME}",
    "$HOME",
    "$$",
    "$1",
    "~",
    "~root",
    "*",
    "?",
    "[ab]",
    "{a,b}",
    "\\",
    "\\n",
    "\\$",
    "%s",
    "%(x)s",
    "{connection_file}",
    " ",
    "\t",
    "=",
    "-",
    "--",
    '"',
    "'",
    "é",
    "☃",
    "😀",
    "\u202e",
    "\u00a0",
]
#: Characters any argv element may hold (no NUL, no lone surrogates).
ARGV_CHARS = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
argv_text = st.lists(
    st.one_of(st.sampled_from(INJECTIONS), st.text(ARGV_CHARS, max_size=6)), max_size=6
).map("".join)
long_text = st.integers(1000, 20000).map(lambda n: ("ab $(x) ; " * n)[:n])
hostile = st.one_of(argv_text, argv_text, argv_text, long_text)
any_text = st.one_of(hostile, st.text(max_size=30))  # NUL and all, for values not via argv
path_text = st.lists(
    st.one_of(st.sampled_from(INJECTIONS), st.text(ARGV_CHARS, max_size=6)), max_size=5
).map(lambda parts: "/" + "/".join(parts))
identifier = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)
kernel_name = st.one_of(
    st.from_regex(r"[a-z0-9._-]{1,40}", fullmatch=True),
    st.text(string.ascii_letters + string.digits + "._-$;` '\"\n/~", min_size=1, max_size=40),
)

SETTINGS = settings(
    max_examples=100,
    deadline=None,
    database=None,
    # the same examples on every run: CI and a developer see the same verdict
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module", autouse=True)
def _canary_dir() -> Iterator[None]:
    CANARY_DIR.mkdir(mode=0o755)
    yield
    shutil.rmtree(CANARY_DIR, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_canary() -> Iterator[None]:
    """Every test, whatever it ran, leaves the canary directory empty."""
    yield
    left = sorted(p.name for p in CANARY_DIR.iterdir())
    assert not left, f"a shell interpreted a value: {left} appeared in {CANARY_DIR}"


# --- (a) pure builders --------------------------------------------------------------------


def clean_path(path: str) -> bool:
    return not any(c in path for c in ",:\n\0")


clean_path_text = st.lists(
    st.one_of(
        st.sampled_from([i for i in INJECTIONS if clean_path(i)]),
        st.text(
            st.characters(exclude_categories=("Cs",), exclude_characters="\x00\n,:"), max_size=6
        ),
    ),
    max_size=5,
).map(lambda parts: "/" + "/".join(parts))
binds_strategy = st.lists(
    st.builds(Bind, clean_path_text, clean_path_text, st.sampled_from(["", "ro", "rw"])),
    max_size=4,
)


@SETTINGS
@given(
    image=hostile,
    command=st.lists(hostile, min_size=1, max_size=5),
    binds=binds_strategy,
    pwd=st.one_of(st.none(), hostile),
    extra=st.lists(hostile, max_size=3),
    gpu=st.sampled_from(["nv", "nvccli", "rocm", "none"]),
)
def test_exec_argv_keeps_every_value_whole(image, command, binds, pwd, extra, gpu) -> None:
    argv = build_exec_argv(
        "/usr/bin/apptainer", image, command, gpu=gpu, binds=binds, pwd=pwd, extra_args=extra
    )
    assert argv[:2] == ["/usr/bin/apptainer", "exec"]
    # the image, then the command, exactly as given, at the end
    assert argv[-len(command) :] == command
    at = len(argv) - len(command) - 1
    assert argv[at] == image
    if extra:
        assert argv[at - len(extra) : at] == extra
    if pwd:
        i = argv.index("--pwd")
        assert argv[i + 1] == pwd
    specs = [argv[i + 1] for i, a in enumerate(argv[: at - len(extra)]) if a == "--bind"]
    unique = list(dict.fromkeys(specs))
    assert specs == unique
    first = {}  # binds with the same source and destination are given once: the first
    for b in binds:
        first.setdefault((b.src, b.dst), b.spec())
    assert specs == list(first.values())
    expected_len = 2 + len(gpu_flags_of(gpu)) + 2 * len(specs) + (2 if pwd else 0)
    assert len(argv) == expected_len + len(extra) + 1 + len(command)


def gpu_flags_of(gpu: str) -> list[str]:
    return {"nv": ["--nv"], "nvccli": ["--nv", "--nvccli"], "rocm": ["--rocm"], "none": []}[gpu]


@SETTINGS
@given(path=st.builds("{}{}{}".format, path_text, st.sampled_from([",", ":"]), path_text))
def test_exec_argv_refuses_a_bind_apptainer_would_split(path) -> None:
    """The working directory is bound as it is; with ',' or ':' apptainer would split it."""
    with pytest.raises(InvalidBind, match="reads as separators"):
        build_exec_argv("apptainer", "/i.sif", ["python3"], binds=[Bind(path, path)], pwd=path)


@SETTINGS
@given(
    value=st.one_of(
        any_text,
        path_text,
        st.builds("{}:{}:{}".format, path_text, path_text, st.sampled_from(["ro", "rw", "x"])),
    )
)
def test_parse_bind_accepts_literally_or_refuses(value) -> None:
    try:
        bind = parse_bind(value)
    except InvalidBind as e:
        assert str(e).startswith(("Bind ", "Empty bind"))
        return
    for path in (bind.src, bind.dst):
        assert path.startswith("/")
        assert not any(c in path for c in ",:\n\0")
    assert bind.opts in ("", "ro", "rw")
    parts = value.split(":")
    assert bind.src == os.path.expanduser(parts[0])
    if len(parts) > 1 and parts[1]:
        assert bind.dst == parts[1]
    assert parse_bind(bind.spec()) == bind


@SETTINGS
@given(
    job_name=hostile,
    values=st.fixed_dictionaries(
        {},
        optional={
            k: hostile
            for k in ("partition", "gpus", "time_limit", "account", "qos", "constraint", "mem")
        },
    ),
    gpu_option=st.sampled_from(["gres", "gpus"]),
    cpus=st.integers(0, 512),
    output=st.one_of(st.just("/dev/null"), hostile),
    chdir=hostile,
    extra=st.lists(hostile, max_size=3),
)
def test_sbatch_argv_keeps_every_value_whole(
    job_name, values, gpu_option, cpus, output, chdir, extra
) -> None:
    argv = build_sbatch_argv(
        job_name,
        gpu_option=gpu_option,
        cpus_per_task=cpus,
        output=output,
        chdir=chdir,
        extra_args=extra,
        **values,
    )
    option = {
        "partition": "--partition=",
        "time_limit": "--time=",
        "account": "--account=",
        "qos": "--qos=",
        "constraint": "--constraint=",
        "mem": "--mem=",
        "gpus": "--gres=gpu:" if gpu_option == "gres" else "--gpus=",
    }
    expected = [f"--job-name={job_name}", f"--output={output}"]
    # gpus "0" asks for no GPU: no --gres at all.
    expected += [option[k] + v for k, v in values.items() if v and (k, v) != ("gpus", "0")]
    expected += [f"--chdir={chdir}"] if chdir else []
    expected += [f"--cpus-per-task={cpus}"] if cpus else []
    for element in expected:
        assert element in argv
    fixed = ["sbatch", "--parsable", "--export=NONE", "--nodes=1"]
    fixed += ["--open-mode=append"] if output != "/dev/null" else []
    assert len(argv) == len(fixed) + len(expected) + len(extra)
    if extra:
        assert argv[-len(extra) :] == extra


@SETTINGS
@given(job_id=hostile, step=hostile, cwd=hostile, extra=st.lists(hostile, max_size=3))
def test_srun_argv_keeps_every_value_whole(job_id, step, cwd, extra) -> None:
    assert build_srun_argv(job_id, step, cwd, extra) == [
        "srun",
        f"--jobid={job_id}",
        "--overlap",
        "--nodes=1",
        "--ntasks=1",
        f"--job-name={step}",
        f"--chdir={cwd}",
        "--quiet",
        *extra,
    ]


def script_header(script: str) -> str:
    """The assignments at the top of the holder script (before its endless loop)."""
    head = script.split("\nwhile :; do\n", 1)[0]
    assert head != script
    return head


@settings(SETTINGS, max_examples=60)
@given(lease=st.one_of(hostile, path_text), seconds=st.integers(10, 10**6))
def test_batch_script_is_valid_sh_and_reads_the_literal_lease(lease, seconds) -> None:
    script = batch_script(lease, seconds)
    check = subprocess.run(["sh", "-n"], input=script, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    # what sh assigns is the literal path (runs the header only, never the loop)
    probe = script_header(script) + '\nprintf "%s" "$lease"; printf "|%s" "$max_age"\n'
    out = subprocess.run(["sh", "-c", probe], capture_output=True, check=True)
    assert out.stdout.decode() == f"{lease}|{seconds}"


def hostile_dir(base: Path, *names: str) -> Path:
    """A directory under ``base`` whose path holds every kind of shell syntax (and CANARY)."""
    path = base.joinpath(*names)
    path.mkdir(parents=True, exist_ok=True)
    return path


HOSTILE = (
    f"sp ace 'sq' \"dq\" $(touch {CANARY}) `touch {CANARY}` ; touch {CANARY} & | < > * ? [x]"
    " {a b} ~ ${HOME} $$ é☃😀 \\ back"
)


def test_batch_script_runs_with_a_hostile_lease_path(tmp_path: Path) -> None:
    """The real holder script under sh: it keeps running while the literal lease file is
    fresh, ends when it goes stale, and ends at once when it is gone."""
    lease = hostile_dir(tmp_path, HOSTILE, "state\nline 2") / "kernel-1 $(x).lease"
    lease.touch()
    script = batch_script(str(lease), 10, check_every=1).replace("max_age=10", "max_age=1")
    proc = subprocess.Popen(
        ["sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        for _ in range(4):  # 2 s of a fresh lease: still holding
            time.sleep(0.5)
            os.utime(lease)
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        out, _ = proc.communicate(timeout=10)  # no more refreshing: stale within ~3 s
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert out.strip() == "lease older than 1 s (Jupyter server gone?); ending allocation"
    lease.unlink()
    gone = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=10)
    assert gone.stdout.strip() == "lease file gone; ending"


# --- provisioner traits (what a kernelspec's config can hold) -----------------------------


@SETTINGS
@given(image=any_text)
def test_image_trait_accepts_an_absolute_path_or_uri_literally(image) -> None:
    try:
        p = ContainerProvisioner(image=image)
    except TraitError as e:
        assert "image must be an absolute path" in str(e) or "NUL" in str(e)
        return
    if image.startswith("~"):
        assert p.image == os.path.expanduser(image)
    else:
        assert p.image == image
    assert p.image == "" or p.image.startswith("/") or "://" in p.image


@SETTINGS
@given(binds=st.lists(st.one_of(any_text, path_text), max_size=3))
def test_binds_trait_accepts_or_raises_trait_error(binds) -> None:
    try:
        p = ContainerProvisioner(binds=binds)
    except TraitError as e:
        assert str(e).startswith(("Bind ", "Empty bind"))
        with pytest.raises(InvalidBind):
            for b in binds:
                parse_bind(b)
        return
    assert p.binds == binds
    assert p.user_binds() == [parse_bind(b) for b in binds]


@SETTINGS
@given(env=st.dictionaries(st.one_of(identifier, any_text), any_text, max_size=4))
def test_container_env_trait_keeps_values_and_checks_names(env) -> None:
    valid = all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k) for k in env)
    try:
        p = ContainerProvisioner(container_env=env)
    except TraitError as e:
        assert not valid
        assert "is not a valid variable name" in str(e)
        return
    assert valid
    assert p.container_env == env


@SETTINGS
@given(
    trait=st.sampled_from(
        ["time_limit", "partition", "account", "qos", "constraint", "mem", "gpus"]
    ),
    value=any_text,
)
def test_slurm_values_are_literal_or_refused(trait, value) -> None:
    try:
        p = SlurmProvisioner(**{trait: value})
    except TraitError as e:
        assert "\n" in value or "\0" in value or value.startswith("-")
        assert "is not a valid Slurm value" in str(e)
        return
    assert getattr(p, trait) == value


def test_relative_state_dir_is_refused() -> None:
    with pytest.raises(TraitError, match="absolute"):
        SlurmProvisioner(state_dir="relative/state")


@SETTINGS
@given(env=st.dictionaries(identifier, any_text.filter(lambda v: "\0" not in v), max_size=4))
def test_container_env_escapes_exactly_what_the_runtime_evaluates(env) -> None:
    """apptainer sources `export K="<value>"` with only '"' escaped; un-escaping the way sh
    does inside double quotes must give the value back, and nothing may stay active."""
    mapped = container_env("apptainer", env)
    assert set(mapped) == {"APPTAINERENV_" + k for k in env}
    for k, v in env.items():
        escaped = mapped["APPTAINERENV_" + k]
        assert unescape_double_quoted(escaped) == v
    assert container_env("apptainer", env, evaluated=False) == {
        "APPTAINERENV_" + k: v for k, v in env.items()
    }


def unescape_double_quoted(text: str) -> str:
    """What sh makes of ``text`` inside double quotes, refusing any live '$' or '`'."""
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in '$`\\"\n':
            # backslash-newline would be a line continuation (swallowed): never produced
            assert text[i + 1] != "\n", f"escaped newline in {text!r}"
            out.append(text[i + 1])
            i += 2
            continue
        assert c not in "$`", f"unescaped {c!r} in {text!r}"
        if c == "\\":
            raise AssertionError(f"lone backslash in {text!r}")
        out.append(c)
        i += 1
    return "".join(out)


# --- (b) the CLI --------------------------------------------------------------------------

SIF_HEADER = b"\0" * 32 + b"SIF_MAGIC" + b"\0" * 2048


def cli_reads(value: str) -> str:
    """What traitlets makes of a string option from the command line: a leading '~' expanded
    (os.path.expanduser), then one pair of matching surrounding quotes stripped (with a
    DeprecationWarning). Everything else stays as typed; no shell is involved."""
    value = os.path.expanduser(value)
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``jupyter kernelprovider ARGV`` in this process: (exit code, stdout, stderr)."""
    KernelProviderApp.clear_instance()
    InstallApp.clear_instance()
    out, err = io.StringIO(), io.StringIO()
    code: Any = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            app = KernelProviderApp()
            app.initialize(argv)
            app.start()
        except SystemExit as e:
            code = e.code
    KernelProviderApp.clear_instance()
    InstallApp.clear_instance()
    return int(code or 0), out.getvalue(), err.getvalue()


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("DATA", "RUNTIME", "CONFIG"):
        monkeypatch.setenv(f"JUPYTER_{var}_DIR", str(tmp_path / var.lower()))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "path"))
    monkeypatch.setenv("JUPYTER_CONFIG_PATH", str(tmp_path / "config"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "0")
    images = tmp_path / "images"
    images.mkdir()
    monkeypatch.chdir(images)
    return tmp_path


def one_clear_line(err: str) -> str:
    """The refusal: one line naming the problem, never a traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    refusals = [
        line
        for line in lines
        if line.startswith("jupyter kernelprovider: ") or "Bad config encountered" in line
    ]
    assert len(refusals) == 1, err
    return refusals[0]


@pytest.mark.filterwarnings("ignore:Supporting extra quotes:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:--InstallApp:DeprecationWarning")
@settings(SETTINGS, max_examples=150)
@given(
    name=kernel_name,
    display=hostile,
    binds=st.lists(st.one_of(path_text, hostile), max_size=3),
    env=st.dictionaries(identifier, hostile, max_size=3),
    image_name=argv_text.map(lambda s: s.replace("/", "_")[:150]),
    relative=st.booleans(),
)
def test_cli_install_writes_literal_values_or_refuses(
    cli_env, name, display, binds, env, image_name, relative
) -> None:
    # traitlets reads a lone '[...]' as a Python list literal (deprecated): not a literal value
    assume(not (len(binds) == 1 and binds[0].startswith("[") and binds[0].endswith("]")))
    # A value that starts with '-' is an option-parser matter (traitlets' argparse reads
    # '--display-name=--' as a broken option), not a shell: out of scope here.
    assume(not any(v.startswith("-") for v in [name, display, *binds, *env.values()]))
    image = cli_env / "images" / f"img {image_name}.sif"
    image.write_bytes(SIF_HEADER)
    prefix = Path(tempfile.mkdtemp(dir=cli_env))
    argv = [
        "install",
        f"--image={image.name if relative else image}",
        f"--name={name}",
        f"--display-name={display}",
        f"--prefix={prefix}",
    ]
    argv += [f"--bind={b}" for b in binds]
    argv += [f"--env={k}={v}" for k, v in env.items()]
    try:
        code, out, err = run_cli(argv)
        bind_errors = []
        for b in binds:
            try:
                parse_bind(cli_reads(b))
            except InvalidBind as e:
                bind_errors.append(str(e))
        name = cli_reads(name)
        name_ok = valid_kernel_name(name)
        if not name_ok:
            assert code == 1
            assert one_clear_line(err).startswith(f"jupyter kernelprovider: --name {name!r}")
            return
        if bind_errors:
            assert code == 1
            assert one_clear_line(err) == f"jupyter kernelprovider: {bind_errors[0]}"
            return
        assert code == 0, err
        assert "Traceback" not in err
        spec = json.loads(
            (prefix / "share/jupyter/kernels" / name.lower() / "kernel.json").read_text()
        )
        config = spec["metadata"]["kernel_provisioner"]["config"]
        assert spec["display_name"] == (cli_reads(display) or name)
        assert config["image"] == str(image)
        assert config.get("binds", []) == [cli_reads(b) for b in binds]
        assert config.get("container_env", {}) == {k: cli_reads(v) for k, v in env.items()}
        assert spec["argv"] == ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    finally:
        image.unlink()
        shutil.rmtree(prefix)


@SETTINGS
@given(image=argv_text)
def test_name_from_any_image_is_a_valid_kernel_name(image) -> None:
    assert valid_kernel_name(name_from_image(image))


@pytest.mark.parametrize("name", [".", "..", "...", "ok\n", "a/b", "../x", "a" * 300])
def test_cli_refuses_a_name_that_is_a_path(cli_env: Path, name: str) -> None:
    """'..' was accepted by the name check and made KernelSpecManager delete the kernels
    directory's parent (the whole share/jupyter of the prefix)."""
    image = cli_env / "images" / "img.sif"
    image.write_bytes(SIF_HEADER)
    prefix = cli_env / "prefix"
    keep = prefix / "share/jupyter/lab/settings.json"
    keep.parent.mkdir(parents=True)
    keep.write_text("keep")
    code, _, err = run_cli(["install", f"--image={image}", f"--name={name}", f"--prefix={prefix}"])
    assert code == 1
    line = one_clear_line(err)
    assert "--name" in line or "File name too long" in line
    assert keep.read_text() == "keep"
    assert not (cli_env / "images" / "kernel.json").exists()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--bind=relative/dir"], "is relative. Use an absolute path"),
        (["--bind=/a,b"], "contains ',' or ':'"),
        (["--bind=/a:/b:rx"], "option 'rx' is not one of ro, rw"),
        (["--bind=/a\nb"], "newline or NUL"),
        (["--gpu=cuda$(x)"], "expected any of ['nv', 'nvccli', 'rocm', 'none']"),
        (["--env=NOEQUALS"], "container_env"),
        (["--cpus-per-task=4; rm -rf /"], "cpus_per_task"),
        (["--image=/nonexistent/$(touch x).sif"], "not found"),
    ],
)
def test_cli_refusals_are_one_line(cli_env: Path, args: list[str], says: str) -> None:
    image = cli_env / "images" / "img.sif"
    image.write_bytes(SIF_HEADER)
    if not any(a.startswith("--image=") for a in args):
        args = [f"--image={image}", *args]
    code, out, err = run_cli(["install", "--name=k", *args])
    assert code == 1
    assert says in one_clear_line(err)
    assert "Installed" not in out


def test_cli_refuses_an_env_name_the_provisioner_refuses(cli_env: Path) -> None:
    image = cli_env / "images" / "img.sif"
    image.write_bytes(SIF_HEADER)
    prefix = cli_env / "prefix"
    code, _, err = run_cli(
        ["install", f"--image={image}", "--name=k", "--env=1BAD=x", f"--prefix={prefix}"]
    )
    assert code == 1
    assert "1BAD" in one_clear_line(err)


def test_cli_installs_a_uri_image(cli_env: Path) -> None:
    prefix = cli_env / "prefix"
    code, _, err = run_cli(
        ["install", "--image=docker://python:3.11", "--name=k", f"--prefix={prefix}"]
    )
    assert code == 0, err
    spec = json.loads((prefix / "share/jupyter/kernels/k/kernel.json").read_text())
    assert spec["metadata"]["kernel_provisioner"]["config"]["image"] == "docker://python:3.11"


def cli_command() -> list[str]:
    script = Path(sys.executable).parent / "jupyter-kernelprovider"
    return [str(script)] if script.exists() else [sys.executable, "-m", "kernelprovider.app"]


def test_cli_subprocess_writes_hostile_values_literally(tmp_path: Path) -> None:
    """The real command in a child process: values full of shell syntax arrive in kernel.json
    as typed, and nothing ran them."""
    images = hostile_dir(tmp_path, HOSTILE)
    image = images / "img $(touch x) ; `y`.sif"
    image.write_bytes(SIF_HEADER)
    bind_src = hostile_dir(tmp_path, HOSTILE, "data")
    display = f"TF 1.8 $(touch {CANARY}) `touch {CANARY}` ; touch {CANARY}\nline2 é☃"
    env_value = f"$(touch {CANARY}) ${{HOME}} \\ \" ' ; | & \n"
    bind = f"{bind_src}:/mnt/d $(x):ro"
    prefix = tmp_path / "prefix"
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"), TMPDIR=str(tmp_path))
    proc = subprocess.run(
        [
            *cli_command(),
            "install",
            f"--image={image}",
            "--name=hostile",
            f"--display-name={display}",
            f"--bind={bind}",
            f"--env=KP_VALUE={env_value}",
            f"--extra-arg=--env=X=$(touch {CANARY})",
            f"--prefix={prefix}",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    spec = json.loads((prefix / "share/jupyter/kernels/hostile/kernel.json").read_text())
    config = spec["metadata"]["kernel_provisioner"]["config"]
    assert spec["display_name"] == display
    assert config["image"] == str(image)
    assert config["binds"] == [bind]
    assert config["container_env"] == {"KP_VALUE": env_value}
    assert config["extra_args"] == [f"--env=X=$(touch {CANARY})"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([f"--bind=/data,$(touch {CANARY})"], "contains ',' or ':'"),
        (["--gpu=;touch x"], "Bad config encountered"),
        (["--name=../../etc"], "--name"),
        ([f"--image=/nonexistent $(touch {CANARY}).sif"], "not found"),
    ],
)
def test_cli_subprocess_refusals_are_one_line(tmp_path: Path, args: list[str], says: str) -> None:
    image = tmp_path / "img.sif"
    image.write_bytes(SIF_HEADER)
    if not any(a.startswith("--image=") for a in args):
        args = [f"--image={image}", *args]
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"), TMPDIR=str(tmp_path))
    proc = subprocess.run(
        [*cli_command(), "install", f"--prefix={tmp_path / 'p'}", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 1
    assert says in one_clear_line(proc.stderr)
    assert not (tmp_path / "p").exists()


# --- (c) real kernels ---------------------------------------------------------------------


async def start_refused(name: str, cwd: Path, jupyter_dirs: dict[str, Path]) -> None:
    """Start kernel ``name`` the way jupyter_server does (connection files in the runtime
    directory); it must fail, and leave no connection file (it holds the key) behind."""
    mkm = AsyncMultiKernelManager(connection_dir=str(jupyter_dirs["runtime"]))
    try:
        await mkm.start_kernel(kernel_name=name, cwd=str(cwd))
    finally:
        assert list(jupyter_dirs["runtime"].iterdir()) == []
        assert mkm.list_kernel_ids() == []


@pytest.mark.integration
@pytest.mark.timeout(120)
async def test_kernel_with_hostile_paths_and_values(images, jupyter_dirs, tmp_path) -> None:
    """Working directory, image path, bind source and destination, and a container_env value,
    all full of shell syntax: the kernel starts and sees each of them literally."""
    cwd = hostile_dir(tmp_path, HOSTILE, "work dir\nline 2 ü")
    image_dir = hostile_dir(tmp_path, HOSTILE, "images")
    image = image_dir / "tf 1.8: $(touch x), `y`; 'q\".sif"
    image.symlink_to(images.test)
    bind_src = hostile_dir(tmp_path, HOSTILE, "data")
    (bind_src / "marker $(x).txt").write_text("ok")
    bind_dst = f"/mnt/kp data $(touch {CANARY}) `touch {CANARY}` ; é"
    value = (
        f"$(touch {CANARY}) `touch {CANARY}`; touch {CANARY} | & ${{HOME}} $HOME $$ \\$ "
        "\\ trailing\\ \" ' \nline2 é☃😀 {connection_file} \\"
    )
    spec = build_kernelspec(
        "hostile $(x)",
        {
            "image": str(image),
            "gpu": "none",
            "binds": [f"{bind_src}:{bind_dst}:ro"],
            "container_env": {"KP_HOSTILE": value},
        },
    )
    install_kernelspec(spec, "hostile", prefix=str(jupyter_dirs["prefix"]))
    km = AsyncKernelManager(kernel_name="hostile")
    await km.start_kernel(cwd=str(cwd))
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        code = (
            "import json, os\n"
            "print(json.dumps([os.getcwd(), os.environ.get('KP_HOSTILE'),"
            f" sorted(os.listdir({bind_dst!r}))]))\n"
        )
        reply, out = await run_cell(kc, code)
        assert reply["status"] == "ok", out
        got_cwd, got_value, listing = json.loads(out)
        assert got_cwd == str(cwd)
        assert got_value == value
        assert listing == ["marker $(x).txt"]
        argv = km.provisioner.process.args
        assert str(image) in argv and str(cwd) in argv
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)
    assert not CANARY.exists()


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_working_directory_with_a_separator_is_refused(
    images, install_kernel, jupyter_dirs, tmp_path
) -> None:
    cwd = hostile_dir(tmp_path, "notes: 2024, draft")
    name = install_kernel("sep", images.test, gpu="none")
    with pytest.raises(InvalidBind, match="reads as separators"):
        await start_refused(name, cwd, jupyter_dirs)


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_relative_image_path_is_refused(images, jupyter_dirs, monkeypatch) -> None:
    monkeypatch.chdir(images.test.parent)
    spec = build_kernelspec("rel", {"image": images.test.name, "gpu": "none"})
    install_kernelspec(spec, "rel", prefix=str(jupyter_dirs["prefix"]))
    with pytest.raises(TraitError, match="image must be an absolute path or a URI"):
        await start_refused("rel", jupyter_dirs["work"], jupyter_dirs)


@pytest.mark.integration
@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["loop", "dangling"])
async def test_image_symlink_loop_is_refused(
    kind: str, install_kernel, jupyter_dirs, tmp_path
) -> None:
    image = tmp_path / f"{kind} $(touch {CANARY.name}).sif"
    if kind == "loop":
        other = tmp_path / "other.sif"
        image.symlink_to(other)
        other.symlink_to(image)
    else:
        image.symlink_to(tmp_path / "missing.sif")
    name = install_kernel(kind, image, gpu="none")
    with pytest.raises(ImageNotFound, match="symlink that leads nowhere"):
        await start_refused(name, jupyter_dirs["work"], jupyter_dirs)
    with pytest.raises(KernelProviderError):
        check_image(str(image))
