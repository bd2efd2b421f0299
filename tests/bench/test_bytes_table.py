"""`python -m bench.bytes_table`: the README table is its output, and the pieces it rests on."""
import os

from bench import bytes_table

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_readme_table_is_the_script_output():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    start, end = "<!-- bytes-table -->\n", "<!-- /bytes-table -->"
    assert start in readme and end in readme, "README.md lost its bytes-table markers"
    shown = readme.split(start, 1)[1].split(end, 1)[0]
    assert shown == bytes_table.table(), "README's bytes table is stale: paste `python -m bench.bytes_table`"


def test_our_launches_and_bytes_per_step():
    """Counted from real steps: AGD 2 launches (norms, update), LAMB and YellowFin 3, the rest 1; bytes are the
    algorithms' minimum (docs/design.md rule 5: Adam 16 B read + 12 B written)."""
    assert bytes_table.ours() == {"AGD": (16, 2), "Adam / AdamW": (28, 1), "SGD momentum": (20, 1),
                                  "RMSprop": (20, 1), "Adagrad": (20, 1), "LAMB": (44, 3), "YellowFin": (36, 3)}


def test_multi_tensor_apply_launch_rule():
    full = bytes_table.CHUNK * bytes_table.MAX_CHUNKS
    assert bytes_table.launches(4, [full]) == 1
    assert bytes_table.launches(4, [full + 1]) == 2  # the chunk limit splits one tensor
    assert bytes_table.launches(4, [10] * 36) == 1 and bytes_table.launches(4, [10] * 37) == 2  # 36 tensors
    assert bytes_table.launches(1, [1] * 110) == 1 and bytes_table.launches(1, [1] * 111) == 2
    # a tensor split across a launch boundary is carried into the next launch: 2 x 300 chunks -> 600 / 320
    assert bytes_table.launches(2, [300 * bytes_table.CHUNK] * 2) == 2


def test_model_is_1b_parameters():
    assert 1.0e9 <= sum(bytes_table.MODEL) <= 1.02e9
