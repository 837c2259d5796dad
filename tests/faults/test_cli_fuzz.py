"""Fuzz: every option of every ``slidestream`` command, given bad values, is refused at the door.

The commands are enumerated from the click group, so a new command or option is covered as soon as it exists.
For each option (flags aside) a seeded random draw of values that no option of its type may accept (NaN,
infinities, numbers out of range or not whole, text that is not a number, unknown choices, missing paths, a file
where a folder is wanted and the reverse, empty text, control characters, unknown heads, encoders, devices and
scheduler addresses) is passed with valid values for every required argument and option, and the command must
end with click's usage error naming the option: exit status 2, no traceback. ``SLIDESTREAM_SCHEDULER`` is fuzzed
through the environment the same way.

The commands' bodies are replaced by a sentinel for the duration of a test: a value that got past the door would
reach it and fail the test, rather than run a benchmark on an empty folder. What the bodies do with values that
pass the door is the business of the planted cases (test_errors.py, test_configs.py, test_overwrite.py).

An option whose type accepts any text (click's plain ``STRING``, without a validating callback) fails here with
a message saying so: give it a type from :mod:`slidestream.cli._common` (``Name`` with a check, ``Number`` …).
"""

from __future__ import annotations

import random
import string
import time

import click
import pytest
import torch
from click.testing import CliRunner

from slidestream.cli import _common
from slidestream.cli.main import main

SEED = 16
DRAWS = 4  # bad values tried per option, besides the fixed ones of its type


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


COMMANDS = list(_commands(main))
CASES = [(path, p.name) for path, cmd in COMMANDS for p in cmd.params
         if isinstance(p, click.Option) and not p.is_flag]
assert len(CASES) > 60, "the command line lost its options?"


class _Reached(Exception):
    """A command body ran: some value got past the door."""


@pytest.fixture
def world(tmp_path, monkeypatch):
    """Existing files and folders for the required arguments, and every command body replaced by a sentinel."""
    (tmp_path / "folder").mkdir()
    afile = tmp_path / "file.csv"
    afile.write_text("slide,label\n")
    for _, cmd in COMMANDS:
        def reached(*args, _name=cmd.name, **kwargs):
            raise _Reached(_name)
        monkeypatch.setattr(cmd, "callback", reached)
    return tmp_path


def _path_value(ptype: click.Path, world) -> str:
    if ptype.exists:
        return str(world / "folder") if ptype.dir_okay else str(world / "file.csv")
    return str(world / ("new.svs" if ptype.file_okay and not ptype.dir_okay else "new_folder"))


def _baseline(param: click.Parameter, world) -> list[str]:
    """Valid command-line words for a required parameter."""
    t = param.type
    if isinstance(t, click.Path):
        value = _path_value(t, world)
    elif isinstance(t, click.Choice):
        value = t.choices[0]
    elif isinstance(t, _common.Number):
        value = _number_value(t)
    elif isinstance(t, _common.Name):
        value = str(param.default) if param.default is not None else "x"
    else:  # slides, stores, inputs: any existing path gets past the door
        value = str(world / "file.csv")
    if isinstance(param, click.Argument):
        return [value]
    return [param.opts[0], value]


def _garbage(rng: random.Random) -> str:
    return "zz" + "".join(rng.choice(string.ascii_lowercase + string.digits + "-_") for _ in range(rng.randint(3, 12)))


def _number_value(t: "_common.Number") -> str:
    return str(t.minimum + (0 if t.integer else 1) if t.minimum is not None else 1)


def _bad_values(param: click.Option, world, rng: random.Random) -> list:
    """Bad command-line values of an option: words, or lists of words for options of several values."""
    t = param.type
    if isinstance(t, click.Tuple):  # --slide-mm W H: each part bad in turn, the others valid
        good = [_number_value(tt) for tt in t.types]
        out = []
        for i, tt in enumerate(t.types):
            for bad in _bad_values(click.Option(param.opts, type=tt), world, rng)[:3]:
                out.append(good[:i] + [bad] + good[i + 1:])
        return out
    if isinstance(t, _common.Number):
        pool = ["inf", "-inf", "abc", "", "1e999", "0x10", "1,5"]
        lo, hi = t.minimum, t.maximum
        if lo is not None:
            step = rng.randint(1, 1000)
            pool.append(str(int(lo) - step) if t.integer else repr(lo - rng.uniform(1e-3, 1e3)))
            if t.open_min:
                pool.append(repr(float(lo)))
        if hi is not None:
            pool.append(str(int(hi) + rng.randint(1, 1000)) if t.integer else repr(hi + rng.uniform(1e-3, 1e3)))
        if t.integer:
            pool.append(f"{rng.uniform(1.01, 99.99):.2f}")
        return ["nan", *rng.sample(pool, min(DRAWS, len(pool)))]
    if isinstance(t, click.Choice):
        return ["", _garbage(rng)]
    if isinstance(t, click.Path):
        bad = [str(world / f"missing-{_garbage(rng)}" / "x")] if t.exists else []
        if not t.file_okay:
            bad.append(str(world / "file.csv"))
        if not t.dir_okay:
            bad.append(str(world / "folder"))
        return bad
    if isinstance(t, _common.Name):
        pool = ["", "   ", "a\x00b", "two\nlines", "tab\there", "bell\x07", "é" * 300]
        bad = rng.sample(pool, DRAWS)
        if t.check is not None:
            bad.append(_garbage(rng))
            if t.what == "device" and not torch.cuda.is_available():
                bad.append("cuda")
        return bad
    if param.callback is _common._pixel_count:
        return ["abc", "-1", "0", "1.5", "nan", "inf"]
    pytest.fail(f"{param.opts[0]} takes any text ({t!r}, no validating callback): give it a type from "
                "slidestream.cli._common so bad values are refused at the door")


def _invoke(path, cmd, args, env=None):
    return CliRunner().invoke(main, [*path, *args], env=env)


@pytest.mark.parametrize("path,name", CASES, ids=[f"{' '.join(p)} {n}" for p, n in CASES])
def test_bad_option_values_are_refused_at_the_door(world, path, name):
    cmd = dict(COMMANDS)[path]
    param = next(p for p in cmd.params if p.name == name)
    rng = random.Random(f"{SEED}:{' '.join(path)}:{name}")
    required = [w for p in cmd.params if p.required and p is not param for w in _baseline(p, world)]
    for value in _bad_values(param, world, rng):
        words = value if isinstance(value, list) else [value]
        r = _invoke(path, cmd, [param.opts[0], *words, *required])
        where = f"{' '.join(path)} {param.opts[0]} {value!r}"
        assert not isinstance(r.exception, _Reached), f"{where}: accepted at the door"
        assert "Traceback" not in r.output, f"{where}: {r.output}"
        assert r.exit_code in (1, 2), f"{where}: exit {r.exit_code}: {r.output}"
        assert r.exception is None or isinstance(r.exception, SystemExit), f"{where}: {r.exception!r}"
        named = any(opt in r.output for opt in param.opts) or any(w and w in r.output for w in words)
        assert named, f"{where}: the message names neither the option nor the value: {r.output}"


def test_the_baseline_reaches_the_command(world):
    """The valid values used around each bad one do get past the door (else the test above proves nothing)."""
    for path, cmd in COMMANDS:
        required = [w for p in cmd.params if p.required for w in _baseline(p, world)]
        r = _invoke(path, cmd, required)
        assert isinstance(r.exception, _Reached), f"{' '.join(path)}: {r.output}"


SCHEDULER_COMMANDS = [(path, cmd) for path, cmd in COMMANDS
                      if any(getattr(p, "envvar", None) == "SLIDESTREAM_SCHEDULER" for p in cmd.params)]


@pytest.mark.parametrize("path,cmd", SCHEDULER_COMMANDS, ids=[" ".join(p) for p, _ in SCHEDULER_COMMANDS])
def test_a_bad_scheduler_in_the_environment_is_refused(world, path, cmd):
    rng = random.Random(f"{SEED}:env:{' '.join(path)}")
    required = [w for p in cmd.params if p.required for w in _baseline(p, world)]
    for value in ["bogus", "tcp://", "http://host:8786", f"tcp://{_garbage(rng)}:99x", "tcp://h:1 2"]:
        r = _invoke(path, cmd, required, env={"SLIDESTREAM_SCHEDULER": value})
        assert not isinstance(r.exception, _Reached), f"SLIDESTREAM_SCHEDULER={value!r} accepted"
        assert r.exit_code == 2 and "--scheduler" in r.output and "SLIDESTREAM_SCHEDULER" in r.output, r.output


def test_the_fuzz_stays_fast(world):
    """Refusing at the door costs milliseconds: one command with every option bad, one after another."""
    path, cmd = next((p, c) for p, c in COMMANDS if p == ("tile",))
    rng = random.Random(SEED)
    required = [w for p in cmd.params if p.required for w in _baseline(p, world)]
    t0 = time.perf_counter()
    n = 0
    for param in cmd.params:
        if isinstance(param, click.Option) and not param.is_flag and not param.required:
            for value in _bad_values(param, world, rng):
                words = value if isinstance(value, list) else [value]
                assert _invoke(path, cmd, [param.opts[0], *words, *required]).exit_code == 2
                n += 1
    assert n > 50 and (time.perf_counter() - t0) / n < 0.25
