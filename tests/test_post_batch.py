"""Post-processing of several performers at once (issue 9): one chain over ``[P, F, 52]`` blocks
gives each performer exactly what its own single-performer chain gives, whoever else is in the
batch, whatever the block sizes, with performers dropping out of batches and coming back; and
nothing of one performer (NaN, huge values, loud audio) reaches another's frames."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bridge.blendshapes import NUM_BLENDSHAPES, canonical_index
from bridge.config import PostConfig, parse_config
from bridge.frame import frame_end_sample
from bridge.post import GroupedPostChain, PostChain, build_post_chain, group_by_structure, structure_key
from bridge.post.base import FrameContext, performer_seed
from bridge.post.blink import Blinks
from bridge.post.calibration import CalibrationData, save_calibration
from bridge.post.finite import OutputGuard
from bridge.post.gate import SilenceGate
from bridge.post.head import HeadMotion
from tests.test_post import silero_standin

HEAD = 9
BLINK = [canonical_index("eyeBlinkLeft"), canonical_index("eyeBlinkRight")]


def post(table: dict[str, Any]) -> PostConfig:
    return parse_config({"post": table}).post


def uniform_cfgs(n: int, vad_model: Path) -> list[PostConfig]:
    """Performers with one stage list and different settings in every stage (VAD kinds too)."""
    cfgs = []
    for i in range(n):
        cfgs.append(post({
            "symmetrize": "average",
            "smoothing": {"kind": "one_euro", "min_cutoff": 2.0 + i, "beta": 0.1 * i,
                          "d_cutoff": 1.0 + 0.5 * i},
            "gate": {"open_db": -40.0 + 2 * (i % 3), "close_db": -46.0 + i % 3, "hold_frames": i % 4,
                     "attack_frames": 1 + i % 3, "release_frames": 2 + i % 3, "floor": 0.05 * (i % 3),
                     "channels": ["speech", "mouth", "upstream"][i % 3],
                     "vad": ["off", "ctc", "silero"][i % 3], "vad_model": str(vad_model),
                     "vad_threshold": 0.4 + 0.1 * (i % 3)},
            "blink": {"seed": 3, "min_interval_s": 0.3 + 0.1 * i, "max_interval_s": 0.6 + 0.2 * i,
                      "strength": 1.0 - 0.1 * i, "replace_model": i % 2 == 0},
            "curve": {"gain": {"jawOpen": 1.1 + 0.1 * i}, "gamma": {"mouthFunnel": 0.8} if i % 2 else {}},
            "head": {"enabled": True, "seed": i % 2, "yaw_deg": 2.0 + i, "idle": 0.1 * i,
                     "saccade_min_s": 0.1, "saccade_max_s": 0.3 + 0.1 * i},
        }))  # fmt: skip
    return cfgs


def mixed_cfgs(tmp_path: Path) -> list[PostConfig]:
    """Performers whose configurations switch on different stages."""
    cal = tmp_path / "cal.toml"
    save_calibration(cal, CalibrationData(np.linspace(0.0, 0.5, NUM_BLENDSHAPES, dtype=np.float32)))
    tables: list[dict[str, Any]] = [
        {"blink": {"seed": 1}},  # the defaults: One Euro, gate, blinks, clamp
        {"smoothing": {"kind": "ema", "alpha": 0.3}, "symmetrize": "max", "blink": {"seed": 1}},
        {"calibration": str(cal), "blink": {"enabled": False}, "gate": {"vad": "ctc"}},
        {"blink": {"seed": 1, "min_interval_s": 0.4, "max_interval_s": 0.5}},  # the defaults' structure
        {"smoothing": {"kind": "off"}, "clamp": False, "gate": {"enabled": False}, "blink": {"seed": 2},
         "curve": {"offset": {"jawOpen": 0.2}}, "head": {"enabled": True}},
        {"smoothing": {"kind": "ema", "alpha": 0.6}, "symmetrize": "max", "blink": {"seed": 9},
         "calibration": str(cal), "calibration_rescale": False},
    ]  # fmt: skip
    return [post(t) for t in tables]


class Streams:
    """Each performer's own model output, loudness, speech probability and audio, on its own
    frame clock (performers start at different frame numbers)."""

    def __init__(self, n: int, frames: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.offset = rng.integers(0, 50, n)  # frame number of each performer's frame 0
        self.values = (rng.random((n, frames, NUM_BLENDSHAPES)) * 1.3 - 0.15).astype(np.float32)
        t, who = np.arange(frames)[None, :], np.arange(n)[:, None]
        speaking = (t + 13 * who) // (15 + 4 * who) % 2  # each performer's own talk/pause rhythm
        self.rms = np.where(speaking == 0, 0.08, 2e-4).astype(np.float32) * rng.uniform(0.5, 2, (n, frames))
        self.rms = self.rms.astype(np.float32)
        self.speech = rng.random((n, frames)).astype(np.float32)
        end = frame_end_sample(int(self.offset.max()) + frames)
        t = np.arange(end) / 16000
        tone = np.sin(2 * np.pi * 180 * t)[None, :] * (0.05 + 0.02 * np.arange(n))[:, None]
        noise = rng.normal(0, 0.05, (n, end))
        self.audio = np.where(np.arange(n)[:, None] % 2 == 0, tone, noise).astype(np.float32)

    def audio_of(self, i: int, k: int, f: int) -> np.ndarray:
        """Performer ``i``'s audio of its frames ``k .. k + f - 1`` (frame numbers on its clock)."""
        return self.audio[i, frame_end_sample(k - 1) : frame_end_sample(k + f - 1)]


def drive(
    cfgs: list[PostConfig], streams: Streams, steps: int, seed: int, guard: bool = False
) -> dict[str, Any]:
    """Run the batched chain over random batches (F of 1-3 frames, random subsets of the
    performers in random order, rows None when all are due in order) and, on the same blocks,
    one single-performer chain per performer fed the old unbatched way; return both."""
    n = len(cfgs)
    rng = np.random.default_rng(seed)
    chain = build_post_chain(cfgs)
    singles = [build_post_chain([c], indices=[i]) for i, c in enumerate(cfgs)]
    guards = OutputGuard(performers=n), [OutputGuard() for _ in range(n)]
    pos = np.zeros(n, dtype=np.int64)  # next frame index into each performer's stream
    skip = np.zeros(n, dtype=np.int64)  # frames the scheduler dropped: the frame number jumps
    got: dict[str, list] = {"batched": [[] for _ in range(n)], "single": [[] for _ in range(n)],
                            "head_b": [[] for _ in range(n)], "head_s": [[] for _ in range(n)]}  # fmt: skip
    frames = streams.values.shape[1]
    subsets = 0
    for _ in range(steps):
        f = int(rng.integers(1, 4))
        if rng.random() < 0.3:
            rows = None
            members = np.arange(n)
        else:
            members = rng.permutation(n)[: int(rng.integers(1, n + 1))]  # some drop out of this batch
            rows = members.astype(np.intp)
            subsets += 1
        if (pos[members] + f > frames).any():
            break
        p = members.size
        first = (streams.offset[members] + pos[members] + skip[members]).astype(np.int64)
        values = np.stack([streams.values[i, pos[i] : pos[i] + f] for i in members])
        rms = np.stack([streams.rms[i, pos[i] : pos[i] + f] for i in members])
        speech = np.stack([streams.speech[i, pos[i] : pos[i] + f] for i in members])
        blocks = [streams.audio_of(int(i), int(k), f) for i, k in zip(members, first, strict=True)]
        audio = np.zeros((p, max(b.shape[0] for b in blocks)), np.float32)
        for r, b in enumerate(blocks):
            audio[r, audio.shape[1] - b.shape[0] :] = b  # right-aligned
        head = np.zeros((p, f, HEAD), np.float32)
        singles_in = values.copy(), speech.copy()
        if guard:
            guards[0].check(values, speech, first, rows)
        chain.process(values, FrameContext(first, rms, speech, head, audio, rows))
        for r, i in enumerate(members):
            v, s = singles_in[0][r].copy(), singles_in[1][r].copy()
            h = np.zeros((f, HEAD), np.float32)
            if guard:
                guards[1][i].check(v, s, int(first[r]))
            singles[i].process(v, FrameContext(int(first[r]), rms[r], s, h, blocks[r]))
            got["batched"][i].append(values[r])
            got["single"][i].append(v)
            got["head_b"][i].append(head[r])
            got["head_s"][i].append(h)
        pos[members] += f
        if rng.random() < 0.1:
            skip[int(rng.integers(n))] += int(rng.integers(1, 4))
    out: dict[str, Any] = {k: [np.concatenate(x) for x in v] for k, v in got.items()}
    out.update(chain=chain, guards=guards, subsets=subsets, frames=pos)
    return out


def assert_same_per_performer(run: dict[str, Any]) -> None:
    for i, (b, s) in enumerate(zip(run["batched"], run["single"], strict=True)):
        assert b.shape == s.shape and b.shape[0] > 100, i
        np.testing.assert_allclose(b, s, rtol=1e-6, atol=1e-7, err_msg=f"performer {i}")
        np.testing.assert_allclose(run["head_b"][i], run["head_s"][i], rtol=1e-6, atol=1e-9)


@pytest.fixture(params=["auto", "vector", "per-performer"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which path the gate, the blinks and head motion take: by batch size (small batches
    performer by performer, the rest vectorised), always vectorised, or always performer by
    performer."""
    size = {"auto": None, "vector": 0, "per-performer": 10**6}[request.param]
    if size is not None:
        for stage in (SilenceGate, Blinks, HeadMotion):
            monkeypatch.setattr(stage, "SMALL_BATCH", size)
    return str(request.param)


def test_batched_chain_equals_independent_chains_with_different_settings(tmp_path: Path, path: str) -> None:
    cfgs = uniform_cfgs(6, silero_standin(tmp_path / "silero_vad.onnx"))
    run = drive(cfgs, Streams(6, 700), steps=400, seed=1)
    chain = run["chain"]
    assert isinstance(chain, PostChain) and not isinstance(chain, GroupedPostChain)
    assert [type(s).__name__ for s in chain.stages] == [
        "OneEuro", "SilenceGate", "Blinks", "Symmetrize", "Curve", "HeadMotion", "Clamp"]  # fmt: skip
    assert run["subsets"] > 100  # most batches held only some performers, in random order
    assert_same_per_performer(run)
    gate = chain.stages[1]
    silero = [v for v in gate.vads if v is not None]
    assert len(silero) == 2 and silero[0] is not silero[1] and min(v.calls for v in silero) > 100
    # the settings do differ: every performer's output is its own
    ends = [b[-200:] for b in run["batched"]]
    assert all(not np.allclose(ends[i], ends[j]) for i in range(6) for j in range(i))


def test_mixed_structures_are_grouped_and_still_equal_independent_chains(tmp_path: Path) -> None:
    cfgs = mixed_cfgs(tmp_path)
    assert group_by_structure(cfgs) == [[0, 3], [1], [2], [4], [5]]
    assert structure_key(cfgs[0]) == ("smoothing:one_euro", "gate", "blink", "clamp")
    run = drive(cfgs, Streams(len(cfgs), 500, seed=2), steps=300, seed=2, guard=True)
    chain = run["chain"]
    assert isinstance(chain, GroupedPostChain) and len(chain.groups) == 5
    assert chain.delays.tolist() == [1, 2, 1, 1, 0, 1]
    assert "performers 0, 3: OneEuro, SilenceGate, Blinks, Clamp" in chain.describe()
    assert_same_per_performer(run)
    unclamped = run["batched"][4]
    assert unclamped.min() < 0  # performer 4 has no clamp, the others keep theirs
    assert all(run["batched"][i].min() >= 0 for i in (0, 1, 2, 3, 5))


def test_guard_per_performer_equals_independent_guards() -> None:
    """NaN bursts in some performers' model output: each is held and counted as its own
    single-stream guard would (and its frames after the guard and the chain are the same)."""
    streams = Streams(4, 600, seed=3)
    streams.values[1, 100:130, 5] = np.nan  # a burst on one channel
    streams.values[3, 200:203] = np.inf  # three whole frames
    streams.values[3, 400, :] = 3e38  # finite, beyond the limit
    streams.speech[2, 50:60] = np.nan
    cfgs = [post({"blink": {"seed": 4}, "gate": {"vad": "ctc"}}) for _ in range(4)]
    run = drive(cfgs, streams, steps=500, seed=3, guard=True)
    assert_same_per_performer(run)
    batched, singles = run["guards"]
    assert batched.frames_by_performer.tolist() == [g.frames for g in singles]
    assert batched.frames_by_performer.tolist() == [0, 30, 10, 3]
    assert batched.episodes_by_performer.tolist() == [g.episodes for g in singles] == [0, 1, 1, 1]
    for out in run["batched"]:
        assert np.isfinite(out).all() and (out >= 0).all() and (out <= 1).all()


def test_guard_lines_name_the_performer(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    guard = OutputGuard(performers=3, names=["alice", "bob", "carol"])
    block = np.full((3, 1, NUM_BLENDSHAPES), 0.5, np.float32)
    for k in range(80):
        block[...] = 0.5
        if 10 <= k < 20:
            block[1, 0, :4] = np.nan
        guard.check(block, None, np.full(3, k))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "performer bob: model output is NaN/Inf in 4 blendshape channel(s) from frame 10; sending each "
        "channel's last finite value instead (the model or its input is broken: check the model file and "
        "the audio level)",
        "performer bob: model output is finite again from frame 20 (10 frame(s) had NaN/Inf and were held)",
    ]
    assert guard.frames_by_performer.tolist() == [0, 10, 0] and not guard.active


def isolation_run(cfgs: list[PostConfig], streams: Streams, blocks: int = 240) -> tuple[np.ndarray, ...]:
    """All performers in every batch (rows None), guard then chain, 2 frames per block."""
    n = len(cfgs)
    chain, guard = build_post_chain(cfgs), OutputGuard(performers=n)
    out = np.zeros((n, 2 * blocks, NUM_BLENDSHAPES), np.float32)
    heads = np.zeros((n, 2 * blocks, HEAD), np.float32)
    for b in range(blocks):
        sl = slice(2 * b, 2 * b + 2)
        first = streams.offset + 2 * b
        values = streams.values[:, sl].copy()
        speech = streams.speech[:, sl].copy()
        audio = np.stack([streams.audio_of(i, int(first[i]), 2)[-1066:] for i in range(n)])
        head = np.zeros((n, 2, HEAD), np.float32)
        with np.errstate(over="raise", invalid="raise"):
            guard.check(values, speech, first)
            chain.process(values, FrameContext(first, streams.rms[:, sl].copy(), speech, head, audio))
        out[:, sl], heads[:, sl] = values, head
    return out, heads


@pytest.mark.parametrize("fault", ["nan", "huge", "loud"])
def test_one_performers_bad_input_changes_no_other_performer(fault: str, tmp_path: Path, path: str) -> None:
    cfgs = uniform_cfgs(4, silero_standin(tmp_path / "silero_vad.onnx"))
    # and a performer of another structure (a second group)
    cfgs.append(
        post({"smoothing": {"kind": "ema", "alpha": 0.5}, "head": {"enabled": True}, "blink": {"seed": 6}})
    )
    clean = Streams(len(cfgs), 480, seed=5)
    bad = Streams(len(cfgs), 480, seed=5)
    victim = 2
    if fault == "nan":
        bad.values[victim, 60:200:3] = np.nan
        bad.speech[victim, 100:300] = np.nan
        bad.rms[victim, 150:250] = np.nan
    elif fault == "huge":
        bad.values[victim, 60:300] = np.float32(3.4e38) * np.sign(bad.values[victim, 60:300] - 0.5)
    else:  # loud: clipping audio and a rig-breaking level
        bad.rms[victim] = 1.0
        bad.audio[victim] = np.sign(bad.audio[victim])
        bad.speech[victim] = 1.0
    want, want_head = isolation_run(cfgs, clean)
    got, got_head = isolation_run(cfgs, bad)
    others = [i for i in range(len(cfgs)) if i != victim]
    np.testing.assert_array_equal(got[others], want[others])
    np.testing.assert_array_equal(got_head[others], want_head[others])
    assert not np.array_equal(got[victim], want[victim])  # the fault did reach its own performer
    assert np.isfinite(got).all() and np.isfinite(got_head).all()


def test_blinks_and_head_motion_differ_per_performer_and_performer_0_is_the_single_stream() -> None:
    cfg = post({"blink": {"seed": 5}, "head": {"enabled": True, "seed": 2}})
    n, frames = 4, 900
    chain = build_post_chain([cfg] * n)
    single = build_post_chain(cfg)  # the single-stream API: one PostConfig, [F, 52] blocks
    values = np.full((n, frames, NUM_BLENDSHAPES), 0.3, np.float32)
    head = np.zeros((n, frames, HEAD), np.float32)
    rms = np.full((n, frames), 0.05, np.float32)
    one, one_head = values[0].copy(), np.zeros((frames, HEAD), np.float32)
    for k in range(frames):
        sl = slice(k, k + 1)
        chain.process(values[:, sl], FrameContext(np.full(n, k), rms[:, sl], None, head[:, sl]))
        single.process(one[k : k + 1], FrameContext(k, rms[0, k : k + 1], None, one_head[k : k + 1]))
    np.testing.assert_array_equal(values[0], one)
    np.testing.assert_array_equal(head[0], one_head)
    blink_on = values[:, :, BLINK[0]] > 0
    for i in range(n):
        for j in range(i):
            assert not np.array_equal(blink_on[i], blink_on[j]), (i, j)  # not in unison
            assert np.abs(head[i, :, 0] - head[j, :, 0]).max() > 1e-3
    blinks = chain.stages[2]
    for i in range(n):  # each performer's schedule is its own (the last start: the next blink, due later)
        onsets = np.flatnonzero(blink_on[i] & ~np.concatenate([[False], blink_on[i, :-1]]))
        assert [s for s in blinks.starts_by_performer[i] if s < frames] == onsets.tolist()
    assert performer_seed(5, 0) == 5 and performer_seed(None, 3) is None
    assert len({performer_seed(5, i) for i in range(100)}) == 100


def test_one_performer_chain_is_the_single_stream_chain() -> None:
    """N = 1 through the batched API ([1, F, 52], batched context) and the old one ([F, 52])
    give the same frames; the old ``build_post_chain(cfg)`` still works."""
    cfg = post({"blink": {"seed": 8}, "symmetrize": "min", "curve": {"gamma": {"jawOpen": 0.5}},
                "head": {"enabled": True}})  # fmt: skip
    a, b = build_post_chain([cfg]), build_post_chain(cfg)
    s = Streams(1, 300, seed=7)
    va, vb = s.values[0].copy(), s.values[0].copy()
    ha, hb = np.zeros((300, HEAD), np.float32), np.zeros((300, HEAD), np.float32)
    k = 0
    for f in [1, 2, 3] * 50:
        sl = slice(k, k + f)
        a.process(va[None, sl], FrameContext(np.array([k]), s.rms[:, sl], None, ha[None, sl]))
        b.process(vb[sl], FrameContext(k, s.rms[0, sl], None, hb[sl]))
        k += f
    np.testing.assert_array_equal(va, vb)
    np.testing.assert_array_equal(ha, hb)


def test_raw_chain_for_many_performers_is_empty() -> None:
    chain = build_post_chain([PostConfig()] * 3, raw=True)
    assert chain.stages == [] and chain.performers == 3 and chain.delay_frames == 0
    v = np.full((3, 2, NUM_BLENDSHAPES), 7.0, np.float32)
    chain.process(v, FrameContext(np.zeros(3, np.int64), np.zeros((3, 2), np.float32)))
    assert (v == 7.0).all()


@pytest.mark.parametrize("kinds", [("one_euro", "one_euro", "one_euro"), ("one_euro", "ema", "one_euro")])
def test_restart_of_one_performer_leaves_the_others_smoothing(kinds: tuple[str, ...]) -> None:
    """A performer whose input came back starts afresh; the others keep their filter state
    (one chain, and chains grouped by stage list)."""
    cfgs = [parse_config({"post": {"smoothing": {"kind": k}, "gate": {"enabled": False},
                                   "blink": {"enabled": False}}}).post for k in kinds]  # fmt: skip
    chain = build_post_chain(cfgs)
    n = len(cfgs)

    def ctx(first: int, frames: int) -> FrameContext:
        return FrameContext(np.full(n, first, np.int64), np.zeros((n, frames), np.float32),
                            None, np.zeros((n, frames, 9), np.float32))  # fmt: skip

    chain.process(np.full((n, 20, NUM_BLENDSHAPES), 0.9, np.float32), ctx(0, 20))
    chain.restart(np.array([1]))
    back = np.full((n, 1, NUM_BLENDSHAPES), 0.2, np.float32)
    chain.process(back, ctx(80, 1))
    assert np.allclose(back[1], 0.2)  # restarted: no blend with the old pose
    assert (back[[0, 2]] > 0.5).all()  # still smoothing from 0.9 towards 0.2
