"""Kind: a benchmark script's shape names. benchmarks/small_shape_overhead.py read '256x128 f64' as float32 256x128
and printed it under the f64 name; 'abc' or a rank it has no layer for ended in a traceback. Bad names now stop
it before any timing with one line naming --shapes (exit 2); a good name still runs (the script reads normlab's
internals, which must not move without it)."""

import pytest


@pytest.fixture(scope="module")
def script(load_benchmark):
    return load_benchmark("small_shape_overhead")


@pytest.mark.parametrize("name", ["256x128 f64", "abc", "2x3x4x5x6", "32x128 CL", "0x4", "8x4x5x5 cl"])
def test_bad_shape_name_is_one_line_naming_the_option(script, capsys, name):
    assert script.main(["--calls", "1", "--rounds", "1", "--shapes", "32x128", name]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "--shapes" in err and repr(name) in err


def test_good_names_parse_and_run(script, capsys):
    assert script.parse("8x512x7x7 CL") == ((8, 512, 7, 7), True)
    assert script.parse("2x4x3") == ((2, 4, 3), False)
    assert script.main(["--calls", "1", "--rounds", "1", "--shapes", "4x3", "2x3x4x4 CL"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("4x3 ") for line in lines) and any(line.startswith("2x3x4x4 CL") for line in lines)
