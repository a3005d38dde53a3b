"""`stforge bitstream` (hw/bitstream.py): user mistakes, fit and timing failures, and the report,
with the toolchain replaced by a fake (no synthesis runs here)."""

import json
import subprocess
import sys
from pathlib import Path


from model.flows import cli
from tests.hw.boards import unused

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


def run_board_cli(*args):
    return subprocess.run([PY, "-m", "model.flows.cli", "bitstream", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_unknown_target_and_missing_artifact(shipped_l1p_path, tmp_path):
    L1P = shipped_l1p_path
    r = run_board_cli("--target", "ice40-hx8k", "--artifact", L1P, "--out", tmp_path / "o",
                      "--report", tmp_path / "r.json")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "stforge: error: bitstream: argument --target: invalid choice: 'ice40-hx8k' (choose "
        "from 'ecp5-85f', 'ice40-up5k')"]
    r = run_board_cli("--target", "ecp5-85f", "--artifact", tmp_path / "none.json",
                      "--out", tmp_path / "o", "--report", tmp_path / "r.json")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "does not exist" in r.stderr
    r = run_board_cli("--target", "ice40-up5k", "--artifact", L1P, "--clock-mhz", "10",
                      "--out", tmp_path / "o", "--report", tmp_path / "r.json")
    assert r.returncode == 2 and "iCE40 PLL cannot make 10 MHz" in r.stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "r.json").exists()


def test_cli_fit_failure_is_one_line_and_writes_nothing(l1p, shipped_l1p_path, tmp_path, monkeypatch, capsys):
    L1P = shipped_l1p_path
    from hw import synth

    calls = []

    def no_fit(top, target, out_dir, clock_mhz, *, name):
        unused(top)
        calls.append((type(top).__name__, target, clock_mhz, name, top.clk_hz))
        raise synth.FitError("Design does not fit ice40-up5k: needs 9000 LC but the iCE40 UP5K "
                             "has 5280 (nextpnr-ice40 failed)")

    monkeypatch.setattr(synth, "build_bitstream", no_fit)
    code = cli.main(["bitstream", "--target", "ice40-up5k", "--artifact", str(L1P),
                           "--out", str(tmp_path / "o"), "--report", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        "stforge: error: Design does not fit ice40-up5k: needs 9000 LC but the iCE40 UP5K has "
        "5280 (nextpnr-ice40 failed)"]
    # the pad is constrained at the 12 MHz oscillator, the PLL makes 24 MHz
    assert calls == [("BoardTop", "ice40-up5k", 12.0, "top", 24e6)]
    assert not (tmp_path / "r.json").exists()


def test_cli_timing_failure_names_the_pll_clock(l1p, shipped_l1p_path, tmp_path, monkeypatch, capsys):
    L1P = shipped_l1p_path
    from hw import synth

    def slow(top, target, out_dir, clock_mhz, *, name):
        unused(top)
        raise synth.TimingError("Timing not met on ecp5-85f at 25 MHz: $glbnet$clk reaches "
                                "35.18 MHz, 50.00 MHz required [log: x]")

    monkeypatch.setattr(synth, "build_bitstream", slow)
    code = cli.main(["bitstream", "--target", "ecp5-85f", "--artifact", str(L1P),
                           "--out", str(tmp_path / "o"), "--report", str(tmp_path / "r.json")])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "stforge: error: Timing not met on ecp5-85f at 50 MHz (PLL from the 25 MHz oscillator): "
        "$glbnet$clk reaches 35.18 MHz, 50.00 MHz required [log: x]; a lower clock can be asked "
        "for with --clock-mhz / CLOCK_MHZ="]
    assert not (tmp_path / "r.json").exists()


def test_cli_success_writes_the_report(l1p, shipped_l1p_path, tmp_path, monkeypatch, capsys):
    L1P = shipped_l1p_path
    from hw import synth

    def fake_build(top, target, out_dir, clock_mhz, *, name):
        unused(top)
        return {"target": target, "board": "ulx3s-85f", "lut": 1, "ff": 2, "bram": 3,
                "spram": 0, "dsp": 4, "fmax_mhz": 51.5, "bitstream": f"{out_dir}/top.bit",
                "sha256": "0" * 64, "clock_mhz": clock_mhz, "board_clock_mhz": 25.0}

    monkeypatch.setattr(synth, "build_bitstream", fake_build)
    report = tmp_path / "reports" / "synth-ecp5-85f.json"
    code = cli.main(["bitstream", "--target", "ecp5-85f", "--artifact", str(L1P), "--out",
                           str(tmp_path / "o"), "--report", str(report)])
    assert code == 0
    data = json.loads(report.read_text())
    for key in ("target", "board", "lut", "ff", "bram", "spram", "dsp", "fmax_mhz", "bitstream",
                "sha256"):
        assert key in data
    assert data["clock_mhz"] == 50.0 and data["board_clock_mhz"] == 25.0
    assert data["pll"] == {"family": "ecp5", "CLKI_DIV": 1, "CLKFB_DIV": 2, "CLKOP_DIV": 12}
    assert data["model"] == "l1p" and data["uart_divisor"] == 434
    assert "fmax 51.5 MHz" in capsys.readouterr().out


def test_cli_lanes_reach_the_board_and_name_the_design(shipped_l1p_path, tmp_path, monkeypatch,
                                                       capsys):
    """`--lanes P` builds the board top around a P-lane accelerator, and its default report and
    folder carry the design's name (<model>-x<P>, as make sim names it); the iCE40 build, whose
    tables the host writes, refuses more than one lane in one line."""
    from hw import bitstream, synth
    built = []

    def fake_build(top, target, out_dir, clock_mhz, *, name):
        built.append((top.accelerator.lanes, str(out_dir)))
        return {"target": target, "board": "ulx3s-85f", "lut": 1, "ff": 2, "bram": 3,
                "spram": 0, "dsp": 4, "fmax_mhz": 51.5, "bitstream": f"{out_dir}/top.bit",
                "sha256": "0" * 64, "clock_mhz": clock_mhz, "board_clock_mhz": 25.0}

    monkeypatch.setattr(synth, "build_bitstream", fake_build)
    monkeypatch.chdir(tmp_path)
    code = cli.main(["bitstream", "--target", "ecp5-85f", "--artifact", str(shipped_l1p_path),
                     "--lanes", "2"])
    assert code == 0
    model = f"{shipped_l1p_path.stem}-x2"
    assert bitstream.design_name(shipped_l1p_path.stem, 2) == model
    assert built == [(2, str(Path("build") / f"ecp5-85f-{model}"))]
    data = json.loads((tmp_path / "build" / "reports" / f"synth-ecp5-85f-{model}.json")
                      .read_text())
    assert data["lanes"] == 2 and data["model"] == model
    capsys.readouterr()
    code = cli.main(["bitstream", "--target", "ice40-up5k", "--artifact", str(shipped_l1p_path),
                     "--lanes", "2", "--out", str(tmp_path / "o"), "--report",
                     str(tmp_path / "r.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "one lane only" in err[0], err
    assert len(built) == 1 and not (tmp_path / "o").exists() and not (tmp_path / "r.json").exists()
