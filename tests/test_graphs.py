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


def test_resumed_and_recomputed_chains_keep_the_plan_order(tmp_path, monkeypatch):
    """A partly resumed run lists each exposure's amps in the plan's order, as a fresh run does:
    the exposure fan-in concatenates them in that order and reads an IFU as one row range."""
    from remedy_dask import geometry
    from remedy_dask.config import PipelineConfig
    from remedy_dask.io import store
    from remedy_dask.workflow.graphview import _ref
    from remedy_dask.workflow.amp_graph import build_amp_graph
    from remedy_dask.workflow.science import ObservationPlan

    slots = [47, 48]
    keys = [f"{s:03d}{a}" for s in slots for a in geometry.AMPS]
    refs = {(e, k): _ref("sci", int(k[:3]), k[3:], 7, e) for e in (1, 2) for k in keys}
    plan = ObservationPlan("20190822", 7, 47, slots, [1, 2], refs, keys, [])
    cal = tmp_path / "cal.h5"
    cal.write_bytes(b"")
    done = {(1, "047RU"), (1, "048LL"), (2, "048RU")}  # finished before a kill
    monkeypatch.setattr(store, "is_complete", lambda root, exp, key, ikey: (exp, key) in done)
    monkeypatch.setattr(store, "read_attrs", lambda root, exp, key: {})
    from remedy_dask.workflow.keys import CheckpointKeys

    summaries, n_resumed = build_amp_graph(plan, cal, tmp_path / "work", PipelineConfig(),
                                           CheckpointKeys.dry(keys))
    assert n_resumed == 3
    for exp in (1, 2):
        listed = [s["key"] if isinstance(s, dict) else s.key.split("-")[1] for s in summaries[exp]]
        assert listed == keys


def test_two_observations_in_one_cluster_share_no_task(tmp_path):
    """reduce-night and reduce-range submit several observations (and calibrations) to one
    scheduler: a task name shared by two of them would hand one observation the other's result."""
    from remedy_dask import geometry
    from remedy_dask.config import PipelineConfig
    from remedy_dask.workflow.calibration import build_calibration_graph
    from remedy_dask.workflow.exposure import build_exposure_graph
    from remedy_dask.workflow.finalize import build_observation_graph
    from remedy_dask.workflow.graphview import _FakeArchive, _ref
    from remedy_dask.workflow.keys import CheckpointKeys
    from remedy_dask.workflow.amp_graph import build_amp_graph
    from remedy_dask.workflow.science import ObservationPlan

    keys = [f"047{a}" for a in geometry.AMPS]
    cal = tmp_path / "cal.h5"
    cal.write_bytes(b"")
    names = []
    for obs in (7, 8):
        refs = {(e, k): _ref("sci", 47, k[3:], obs, e) for e in (1, 2) for k in keys}
        plan = ObservationPlan("20190822", obs, 47, [47], [1, 2], refs, keys, [])
        ck = CheckpointKeys.dry(keys)
        summaries, _ = build_amp_graph(plan, cal, tmp_path / f"w{obs}", PipelineConfig(), ck)
        exposures = build_exposure_graph(plan, summaries, cal, tmp_path / f"w{obs}", None, None,
                                         PipelineConfig(), ck)
        final = build_observation_graph(plan, exposures, cal, tmp_path, "target",
                                        PipelineConfig(), dry=True)
        names.append(set(dict(final.__dask_graph__())))
    assert len(names[0]) > 50 and not names[0] & names[1]
    refs = _FakeArchive().frames_in_window(["20190822"], geometry.FRAME_KINDS)
    cals = [set(dict(build_calibration_graph(refs, ["20190822"], tmp_path, tmp_path / f"{n}.h5",
                                             PipelineConfig(), {k: (None, None) for k in keys}
                                             )[0].__dask_graph__())) for n in ("a", "b")]
    assert not cals[0] & cals[1]
