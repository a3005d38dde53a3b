"""`stforge run` given bad inputs: every mistake — a missing or malformed option, an artifact,
golden file or memory map that is missing, a folder, empty or not what it should be, a port that
cannot be opened — ends in one line ``stforge: error: ...`` on stderr and exit status 2, with no
traceback and no new or changed file. Input mistakes are found before the port is opened (the
port in these cases does not exist, so a mistake found later would name the port instead).

Run in-process through `model.flows.cli.main` (an exception escaping main would be a traceback);
`tests/firmware/test_driver_pty.py` runs the command as a process against fake boards, Ctrl-C
included.
"""

import json
import os
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.flows.cli import main

PORT = "/nonexistent/ttyUSB9"
MODEL = {"input_shape": [1, 8, 8], "input_max": 16, "num_classes": 10, "timesteps": 4,
         "time_varying_input": False, "dataset": "digits"}


def manifest(**model):
    return json.dumps({"model": {**MODEL, **model},
                       "source": {"config": {"data": {"name": "digits", "seed": 0}}}})


def npz_bytes(**arrays):
    import io
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


#: files the mistakes point at: name -> contents (bytes or str); "folder/" is a folder
FILES = {
    "art.json": manifest(),
    "empty": b"",
    "text.txt": "hello\n",
    "list.json": "[]",
    "deep.json": "[" * 100_000,
    "latin1.json": b"\xff\xfe{",
    "no_shape.json": json.dumps({"model": {"input_max": 16, "num_classes": 10}}),
    "bad_classes.json": manifest(num_classes="10"),
    "bad_max.json": manifest(input_max=300),
    "no_timesteps.json": manifest(time_varying_input=True, timesteps=None),
    "cifar.json": json.dumps({"model": {**MODEL, "dataset": "cifar10"}}),
    "bad_seed.json": json.dumps({"model": MODEL, "source": {"config": {"data": {
        "name": "digits", "seed": "x"}}}}),
    "limit0.json": json.dumps({"model": MODEL, "source": {"config": {"data": {
        "name": "digits", "limit": 0}}}}),
    "bad_source.json": json.dumps({"model": MODEL, "source": "x"}),
    "g.npz": npz_bytes(logits=np.zeros((20, 10), np.int64)),
    "g.npy": b"",                               # written with np.save below
    "nologits.npz": npz_bytes(images=np.zeros(3)),
    "flat.npz": npz_bytes(logits=np.zeros(20, np.int64)),
    "float.npz": npz_bytes(logits=np.zeros((20, 10))),
    "few.npz": npz_bytes(logits=np.zeros((2, 10), np.int64)),
    "classes3.npz": npz_bytes(logits=np.zeros((20, 3), np.int64)),
    "cut.npz": npz_bytes(logits=np.zeros((20, 10), np.int64))[:100],
    "map.json": json.dumps({"format": "stforge-memory-map", "version": 1, "loadable": True,
                            "tables": [{"id": 0, "name": "x", "width": 12, "words": [1, 2]}]}),
    "map_overflow.json": json.dumps({"format": "stforge-memory-map", "version": 1, "tables": [
        {"id": 0, "name": "x", "width": 1}]}).replace('"width": 1', '"width": 1e400'),
    "map_wide.json": json.dumps({"format": "stforge-memory-map", "version": 1, "tables": [
        {"id": 0, "name": "wide", "width": 600, "words": [1]}]}),
    "folder/": None,
}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    for name, contents in FILES.items():
        path = tmp_path / name
        if name.endswith("/"):
            path.mkdir()
        elif name == "g.npy":
            np.save(path, np.zeros((20, 10), np.int64))
        elif isinstance(contents, bytes):
            path.write_bytes(contents)
        else:
            path.write_text(contents)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def snapshot(root):
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def one_line_exit_2(argv, capsys, root):
    """Run `stforge run argv`; check it ends in one error line, exit 2, no file touched;
    return the line."""
    before = snapshot(root)
    status = main(["run", *argv])
    out, err = capsys.readouterr()
    assert status == 2, (argv, out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), (argv, err)
    assert lines[0].startswith("stforge: error: ") and "Traceback" not in err
    assert out == ""
    assert snapshot(root) == before, "a file was written or changed"
    return lines[0]


BASE = ["--port", PORT, "--artifact", "art.json"]

#: (what, the arguments replacing or added to BASE, what the line says)
MISTAKES = [
    ("no port", ["--artifact", "art.json"], "the following arguments are required: --port"),
    ("no artifact", ["--port", PORT], "the following arguments are required: --artifact"),
    ("unknown option", BASE + ["--speed", "9"], "unrecognized arguments: --speed 9"),
    ("port missing", BASE, f"cannot open serial port {PORT}: No such file or directory"),
    ("port a folder", ["--port", "folder", "--artifact", "art.json"], ": Is a directory"),
    ("port a file", ["--port", "text.txt", "--artifact", "art.json"], "Could not configure port"),
    ("port empty", ["--port", "", "--artifact", "art.json"], "serial port '': No such file"),
    ("port with a newline", ["--port", "tty\nUSB0", "--artifact", "art.json"],
     r"serial port 'tty\nUSB0': No such file"),
    ("port with a NUL", ["--port", "tty\0", "--artifact", "art.json"], "embedded null"),
    ("artifact missing", ["--port", PORT, "--artifact", "none.json"],
     "artifact none.json not found"),
    ("artifact a folder", ["--port", PORT, "--artifact", "folder"], "is a folder"),
    ("artifact empty", ["--port", PORT, "--artifact", "empty"], "artifact empty is not readable"),
    ("artifact not JSON", ["--port", PORT, "--artifact", "text.txt"], "is not readable"),
    ("artifact not UTF-8", ["--port", PORT, "--artifact", "latin1.json"], "is not readable"),
    ("artifact nested deep", ["--port", PORT, "--artifact", "deep.json"], "is not readable"),
    ("artifact a list", ["--port", PORT, "--artifact", "list.json"], "has no 'model' table"),
    ("artifact without shape", ["--port", PORT, "--artifact", "no_shape.json"],
     "model.input_shape must be"),
    ("artifact classes a string", ["--port", PORT, "--artifact", "bad_classes.json"],
     "model.num_classes must be an integer in 1..255, not '10'"),
    ("artifact input_max 300", ["--port", PORT, "--artifact", "bad_max.json"],
     "model.input_max must be"),
    ("artifact events without T", ["--port", PORT, "--artifact", "no_timesteps.json"],
     "model.timesteps must be"),
    ("artifact of cifar10", ["--port", PORT, "--artifact", "cifar.json"], "trained on 'cifar10'"),
    ("artifact seed a string", ["--port", PORT, "--artifact", "bad_seed.json"], "data seed"),
    ("artifact limit 0", ["--port", PORT, "--artifact", "limit0.json"], "data limit"),
    ("artifact source a string", ["--port", PORT, "--artifact", "bad_source.json"],
     "manifest.source of the artifact must be a table"),
    ("images 0", BASE + ["--images", "0"], "--images: must be at least 1, not 0"),
    ("images -3", BASE + ["--images", "-3"], "--images: must be at least 1"),
    ("images abc", BASE + ["--images", "abc"], "'abc' is not an integer"),
    ("images 1.5", BASE + ["--images", "1.5"], "is not an integer"),
    ("baud 0", BASE + ["--baud", "0"], "--baud: must be at least 1, not 0"),
    ("baud -9600", BASE + ["--baud", "-9600"], "--baud: must be at least 1"),
    ("baud 96e2", BASE + ["--baud", "96e2"], "is not an integer"),
    ("baud empty", BASE + ["--baud", ""], "is not an integer"),
    ("timeout inf", BASE + ["--timeout", "inf"], "--timeout: must be a finite number above 0"),
    ("timeout nan", BASE + ["--timeout", "nan"], "not nan"),
    ("timeout 0", BASE + ["--timeout", "0"], "not 0"),
    ("timeout -1", BASE + ["--timeout", "-1"], "not -1"),
    ("timeout 1e999", BASE + ["--timeout", "1e999"], "not 1e999"),
    ("timeout abc", BASE + ["--timeout", "abc"], "'abc' is not a number"),
    ("clock nan", BASE + ["--clock-mhz", "nan"], "--clock-mhz: must be a finite number above 0"),
    ("clock inf", BASE + ["--clock-mhz", "inf"], "not inf"),
    ("clock 0", BASE + ["--clock-mhz", "0"], "not 0"),
    ("clock -24", BASE + ["--clock-mhz", "-24"], "not -24"),
    ("golden missing", BASE + ["--golden", "none.npz"], "golden data none.npz not found"),
    ("golden a folder", BASE + ["--golden", "folder"], "golden data folder is a folder"),
    ("golden empty name", BASE + ["--golden", ""], "golden data '' is a folder"),
    ("golden empty", BASE + ["--golden", "empty"], "golden data empty is empty"),
    ("golden text", BASE + ["--golden", "text.txt"], "not an .npz file"),
    ("golden an .npy", BASE + ["--golden", "g.npy"], "not an .npz file"),
    ("golden cut short", BASE + ["--golden", "cut.npz"], "golden data cut.npz is not readable"),
    ("golden without logits", BASE + ["--golden", "nologits.npz"], "holds no logits"),
    ("golden logits flat", BASE + ["--golden", "flat.npz"], "one row per image"),
    ("golden logits float", BASE + ["--golden", "float.npz"], "must be integers"),
    ("golden too few", BASE + ["--golden", "few.npz", "--images", "5"],
     "golden data few.npz holds 2 images, 5 requested"),
    ("golden 3 classes", BASE + ["--golden", "classes3.npz"],
     "holds 3 logits per image, the model has 10 classes"),
    ("memory map missing", BASE + ["--memory-map", "none.json"], "memory map none.json does not"),
    ("memory map a folder", BASE + ["--memory-map", "folder"], "memory map folder is a folder"),
    ("memory map empty name", BASE + ["--memory-map", ""], "memory map '' is a folder"),
    ("memory map empty", BASE + ["--memory-map", "empty"], "memory map empty is not readable"),
    ("memory map a list", BASE + ["--memory-map", "list.json"], "is not readable"),
    ("memory map width 1e400", BASE + ["--memory-map", "map_overflow.json"], "is not readable"),
    ("memory map word too wide", BASE + ["--memory-map", "map_wide.json"],
     "a 64-byte payload cannot carry one 75-byte word of wide"),
]


@pytest.mark.parametrize("what, argv, says", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_a_mistake_is_one_line_and_exit_2(workdir, capsys, what, argv, says):
    line = one_line_exit_2(argv, capsys, workdir)
    assert says in line, line


def test_good_inputs_reach_the_port(workdir, capsys):
    """The files the mistakes start from are good: with them, the error is the port's."""
    line = one_line_exit_2(BASE + ["--golden", "g.npz", "--images", "20", "--baud", "9600",
                                   "--timeout", "0.5", "--clock-mhz", "24", "--memory-map",
                                   "map.json"], capsys, workdir)
    assert line == f"stforge: error: cannot open serial port {PORT}: No such file or directory"


# --------------------------------------------------------------------------------------------
# Hypothesis over the arguments
# --------------------------------------------------------------------------------------------

def text(alphabet=string.printable + "\0\x85é"):
    return st.text(alphabet=alphabet, max_size=8)


NUMBERS = st.one_of(st.integers(-10, 10**6).map(str), st.floats().map(repr), text(),
                    st.sampled_from(["nan", "inf", "-inf", "1e999", "0", "0.0", "1e-320",
                                     "115200", "0x10", " 3", "3 "]))
FILE_NAMES = st.one_of(st.sampled_from(sorted(FILES) + ["none.json", ".", ""]), text())

def good_or(good, bad):
    """Half the time a good value, so that examples reach the later checks."""
    return st.one_of(st.sampled_from(good), bad)


OPTIONS = {"--port": st.one_of(st.sampled_from([PORT, "folder", "text.txt", "", "/dev/null"]),
                               text()),
           "--artifact": good_or(["art.json"], FILE_NAMES),
           "--images": good_or(["1", "3", "20"], NUMBERS),
           "--baud": good_or(["9600", "115200"], NUMBERS),
           "--timeout": good_or(["0.5", "2"], NUMBERS),
           "--golden": good_or(["g.npz"], FILE_NAMES),
           "--clock-mhz": good_or(["24"], NUMBERS),
           "--memory-map": good_or(["map.json"], FILE_NAMES)}


@st.composite
def command_lines(draw):
    argv = []
    for option, values in OPTIONS.items():
        if option in ("--port", "--artifact") and draw(st.integers(0, 9)) > 0 \
                or draw(st.booleans()):
            argv += [option, draw(values)]
    return draw(st.permutations([argv[i:i + 2] for i in range(0, len(argv), 2)]))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(pairs=command_lines())
def test_any_command_line_without_a_board_is_one_line_and_exit_2(workdir, capsys, pairs):
    """No board is reachable from these arguments (the ports do not exist or are not ttys), so
    every command line ends in one line and exit 2, whatever else it holds."""
    argv = [item for pair in pairs for item in pair]
    assert os.getcwd() == str(workdir)
    one_line_exit_2(argv, capsys, workdir)
