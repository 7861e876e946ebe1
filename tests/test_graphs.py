"""The committed task-graph views in graphs/ must equal what the graph builders produce now."""

from pathlib import Path

from remedy_dask.workflow.graphview import FULL_SLOTS, calibration_view, science_view

GRAPHS = Path(__file__).resolve().parents[1] / "graphs"


def test_full_focal_plane_has_78_slots():
    assert len(FULL_SLOTS) == 78 and len(set(FULL_SLOTS)) == 78


def test_graph_views_are_current():
    for name, text in (("calibration.md", calibration_view()), ("science.md", science_view())):
        committed = (GRAPHS / name).read_text()
        assert committed == text, f"graphs/{name} is stale: run `remedy-dask graphs`"


def test_science_graph_has_one_chain_per_amp_exposure():
    text = science_view()
    assert "| `ccd` | 936 |" in text and "| `load-cal` | 312 |" in text
