"""The zoo sweep (attnviz.coverage): what a capture records in every model family of timm,
torchvision's transformers and Hugging Face's vision encoders, and the README's table of it.

The sweep itself is slow (every timm family, about a minute on 2 CPU cores); the table,
the counts and the classification of one model are checked fast on hand-made rows and
tiny models.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from attnviz import coverage
from attnviz.coverage import Case, CoverageRow

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- coverage:start -->", "<!-- coverage:end -->"


# -- fast: tables, counts and one model's classification -------------------------------------
def _row(family: str, status: str, library: str = "timm", model: str = "", **kw) -> CoverageRow:
    return CoverageRow(library, family, model or f"{family}_tiny", (64, 64), status, **kw)


ROWS = [
    _row("vit", "recorded", kinds={"self": 12}, placed=12, seconds=0.5),
    _row(
        "swin",
        "recorded, not placed",
        kinds={"self": 4},
        placed=2,
        unplaced=2,
        note="unplaced (no layout): WindowAttention (2)",
    ),
    _row("resnet", "no attention", model="test_resnet"),
    _row("resnet", "recorded", kinds={"channel": 8}),  # a variant with SE: the family has attention
    _row("byoanet", "recorded", kinds={"self": 2}, placed=2),
    _row(
        "byoanet",
        "refused",
        refused={"stages.3.0.self_attn": "a lambda layer ..."},
        note="refused: LambdaLayer: a lambda layer | no map",
    ),
    _row("hgnet", "no attention"),
    _row("odd", "partial", kinds={"self": 1}, placed=1, unrecorded={"blocks.0": "an einsum"}),
    _row("broken", "error", note="build: TypeError: no"),
    _row("ViT", "recorded", library="transformers", kinds={"self": 2}, placed=2),
    _row("huge", "skipped: too large for the sweep"),
]


def test_the_table_has_one_line_per_row_and_says_what_was_found():
    table = coverage.markdown_table(ROWS)
    lines = table.strip().splitlines()
    assert len(lines) == 2 + len(ROWS)
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head == [
        "library",
        "family",
        "model",
        "input",
        "status",
        "records",
        "placed / unplaced",
        "note",
    ]
    swin = next(line for line in lines if "| swin |" in line)
    assert "| 64x64 | recorded, not placed | self 4 | 2 / 2 |" in swin
    assert "WindowAttention (2)" in swin
    resnet = [line for line in lines if "| resnet |" in line]
    assert "| no attention | - | - |" in resnet[0] and "| channel 8 | - |" in resnet[1]
    refused = next(line for line in lines if "LambdaLayer" in line)
    assert "a lambda layer \\| no map" in refused  # a pipe in a note does not split the cell
    assert all(line.count(" | ") + 2 == len(head) + 1 for line in lines[2:]), table
    assert "0.50" not in table  # no timings: the same table from run to run
    timed = coverage.markdown_table(ROWS, seconds=True)
    assert "| s |" in timed.splitlines()[0] and "| 0.50 |" in timed


def test_the_summary_counts_rows_and_families_by_their_worst_row():
    s = coverage.summary(ROWS)
    assert s["rows"] == len(ROWS)
    assert s["families"] == 9  # resnet and byoanet have two rows each
    fams = coverage.family_status(ROWS)
    assert fams[("timm", "resnet")] == "recorded"  # a variant with SE counts, not the worst
    assert fams[("timm", "byoanet")] == "refused"  # a refused variant is worse than recorded
    # attention found: vit, swin, resnet, byoanet, odd, ViT; not hgnet, broken or huge
    assert s["attention_bearing"] == 6
    assert (s["exact"], s["placed"]) == (4, 3)  # vit, swin, resnet, ViT; swin is not placed
    assert s["exact_share"] == pytest.approx(4 / 6) and s["placed_share"] == pytest.approx(3 / 6)
    assert (s["partial"], s["refused"], s["errors"], s["skipped"]) == (1, 1, 1, 1)
    assert s["no_attention"] == 1  # hgnet
    assert s["by_status"]["recorded"] == 4
    assert s["seconds"] == pytest.approx(0.5)
    assert coverage.summary([])["exact_share"] is None


class Tokens(nn.Module):
    """Attention over the pixels of an image, as tokens: softmax(x x^T) @ x."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.softmax(x @ x.transpose(-2, -1) / 4, dim=-1)
        return a @ x


class SoftmaxSquared(Tokens):
    """A kernel attnviz cannot read: a softmax result multiplied by itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.softmax(x @ x.transpose(-2, -1), dim=-1)
        return a @ a


class Net(nn.Module):
    def __init__(self, attention: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.attention = attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.conv(x).flatten(2).transpose(1, 2)  # B x HW x C, row-major
        return self.attention(tokens)


def _case(build, size=(4, 4), **kw) -> Case:
    return Case("mine", "tiny", "net", size, build, **kw)


def _fails() -> nn.Module:
    raise TypeError("bad argument")


def test_one_model_is_classified_by_what_its_capture_found():
    row = coverage.run_case(_case(lambda: Net(Tokens())))
    assert (row.status, row.kinds, row.placed, row.unplaced) == ("recorded", {"self": 1}, 1, 0)
    assert row.attention and not row.warnings and row.seconds > 0

    row = coverage.run_case(_case(lambda: Net(Tokens()), size=(3, 5)))  # 15 tokens: no grid
    assert (row.status, row.placed, row.unplaced) == ("recorded, not placed", 0, 1)
    assert "unplaced (no layout): Tokens (1)" in row.note

    row = coverage.run_case(_case(lambda: Net(SoftmaxSquared())))
    assert row.status == "partial" and list(row.unrecorded) == ["attention"]
    assert "a softmax result multiplied by another one" in row.note
    assert any("attention" in w and "NOT recorded" in w for w in row.warnings)

    row = coverage.run_case(_case(lambda: nn.Sequential(nn.Conv2d(3, 4, 1))))
    assert row.status == "no attention" and not row.attention

    row = coverage.run_case(_case(lambda: Net(nn.Identity())))  # tracked, but nothing applied
    assert row.status == "no attention"

    row = coverage.run_case(_case(_fails))
    assert row.status == "error" and row.note == "build: TypeError: bad argument"

    row = coverage.run_case(_case(lambda: Net(Tokens()), size=(4, 4, 4)))  # not an image
    assert row.status == "error" and row.note.startswith("forward: ")
    assert "fails without a capture too" in row.note

    row = coverage.run_case(_case(_fails, skip="skipped: too large for the sweep", note="42 GB"))
    assert (row.status, row.note, row.seconds) == ("skipped: too large for the sweep", "42 GB", 0)


class NoMap(nn.Module):
    """A module refused by design (registered as such in the test)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


def test_the_sweep_classifies_by_error_type_not_by_wording(monkeypatch):
    """Every capture error reworded: the rows are classified as before (refused, no
    attention, and a model's own error stays an error)."""
    import importlib

    from attnviz import refuse_attention_type, unregister_attention_type

    capture_module = importlib.import_module("attnviz.capture")  # the module, not the function

    refuse_attention_type(NoMap, "no attention map by design")
    try:
        cases = {
            "refused": _case(lambda: nn.Sequential(nn.Conv2d(3, 3, 1), NoMap())),
            "no attention": _case(lambda: nn.Sequential(nn.Conv2d(3, 4, 1))),
            "nothing applied": _case(lambda: Net(nn.Identity())),
            "error": _case(_fails),
        }
        before = {k: coverage.run_case(c).status for k, c in cases.items()}

        def reworded(self, *args, **kwargs):
            ValueError.__init__(self, "Es gibt hier keine Aufmerksamkeit.")

        monkeypatch.setattr(capture_module.CaptureError, "__init__", reworded)
        with pytest.raises(capture_module.NoAttentionError, match="keine Aufmerksamkeit"):
            capture_module.capture(nn.Sequential(nn.Conv2d(3, 4, 1)))  # the wording changed
        after = {k: coverage.run_case(c).status for k, c in cases.items()}
    finally:
        unregister_attention_type(NoMap)
    assert (
        before
        == after
        == {
            "refused": coverage.Status.REFUSED,
            "no attention": coverage.Status.NO_ATTENTION,
            "nothing applied": coverage.Status.NO_ATTENTION,
            "error": coverage.Status.ERROR,
        }
    )


def test_the_callers_random_state_is_left_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    coverage.run_case(_case(lambda: Net(Tokens())))
    assert torch.equal(torch.rand(3), expected)


def test_without_transformers_its_rows_are_skipped_with_the_reason(monkeypatch):
    from attnviz.coverage import catalog

    real = catalog._import
    monkeypatch.setattr(catalog, "_import", lambda n: None if n == "transformers" else real(n))
    rows = coverage.sweep(["transformers"])
    assert [r.family for r in rows] == list(coverage.HF_CASES)
    assert {r.status for r in rows} == {"skipped: transformers is not installed"}
    assert coverage.summary(rows)["skipped"] == len(coverage.HF_CASES)


def test_models_are_chosen_by_library_family_or_name():
    pytest.importorskip("timm")
    rows = coverage.sweep(["timm:vision_transformer_relpos", "timm:test_vit", "torchvision:maxvit"])
    assert [(r.family, r.model) for r in rows] == [
        ("vision_transformer_relpos", "test_vit_relpos"),
        ("vision_transformer_relpos", "vit_relpos_small_patch16_rpn_224"),
        ("vision_transformer", "test_vit"),
        ("maxvit", "maxvit_t"),
    ]
    assert all(r.status == "recorded" for r in rows), coverage.markdown_table(rows)
    with pytest.raises(ValueError, match="names no library, family or model"):
        coverage.sweep(["timm:no_such_model"])


def test_every_timm_family_has_a_row_and_every_curated_model_exists():
    timm = pytest.importorskip("timm")
    families = {c.family for c in coverage.cases(["timm"])}
    assert families == set(timm.list_modules())
    missing = [
        model
        for family, listed in coverage.TIMM_CASES.items()
        if family in families
        for model, _, _ in listed
        if not timm.is_model(model)
    ]
    assert not missing, f"not registered in this timm (update coverage.TIMM_CASES): {missing}"


# -- slow: the whole zoo -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def zoo() -> list[CoverageRow]:
    pytest.importorskip("timm")
    return coverage.sweep()


def _counts(rows: list[CoverageRow]) -> str:
    s = coverage.summary(rows)
    return (
        f"{s['families']} families ({s['rows']} models, {s['seconds']:.0f} s): "
        f"{s['attention_bearing']} attention-bearing, {s['exact']} recorded exactly "
        f"({s['exact_share']:.1%}), {s['placed']} of them placed on the image "
        f"({s['placed_share']:.1%}); {s['partial']} partial, {s['refused']} refused, "
        f"{s['no_attention']} without attention, {s['errors']} errors, "
        f"{s['skipped']} skipped"
    )


@pytest.mark.slow
def test_the_zoo_is_recorded_exactly(zoo):
    counts = _counts(zoo)
    table = coverage.markdown_table([r for r in zoo if r.status not in coverage.EXACT])
    # a partial record never goes unannounced: its capture warned, naming each module
    silent = [
        f"{r.family}/{r.model}: {name}"
        for r in zoo
        if r.status == coverage.PARTIAL
        for name in [*r.unrecorded, *r.failed]
        if not any(name in w for w in r.warnings)
    ]
    assert not silent, f"partial without a CaptureWarning naming the module: {silent}\n{counts}"
    broken = [f"{r.family}/{r.model}: {r.note}" for r in zoo if "the capture broke it" in r.note]
    assert not broken, f"models that run, but not inside a capture: {broken}\n{counts}"
    s = coverage.summary(zoo)
    assert s["exact_share"] is not None and s["exact_share"] >= 0.95, (
        f"fewer than 95% of the attention-bearing families recorded exactly: {counts}\n{table}"
    )


@pytest.mark.slow
def test_the_readme_coverage_table_is_generated(zoo):
    readme = (ROOT / "README.md").read_text()
    found = re.search(re.escape(START) + r"(.*?)" + re.escape(END), readme, re.DOTALL)
    assert found, f"{START} must come before {END} in README.md"
    written, table = found.group(1).strip(), coverage.readme_section(zoo).strip()
    diff = list(difflib.unified_diff(written.splitlines(), table.splitlines(), lineterm="", n=0))
    # not `assert written == table`: pytest's own diff of two long tables takes minutes
    assert not diff, (
        "the README's coverage table is stale: run `python scripts/coverage_table.py "
        f"--write README.md` ({_counts(zoo)}); README -> now:\n" + "\n".join(diff[2:40])
    )
