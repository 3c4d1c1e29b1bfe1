"""The console on what the engine really emits: every figure on screen is the field it comes from.

A recording of the real trainer (``scripts/make_fixture.py``) is replayed into the app and, at the
end of every epoch and just after the next epoch's first batches, the screen is read back: the
focused env's panel and its row in the 80x24 layout, and every panel of the 120x40 layout. Each
figure must be the field of the event it comes from, read straight from the recording (not from
the console's state), formatted by the console's own functions. Figures that are fractions
(accuracies, v(all), v(none)) must read as percentages within 0..100% and Shapley values within
+-100pp, and a current v(all) is that epoch's validation accuracy: a unit mix-up between the
engine and the console (issue 12: Shapley values emitted in points, formatted as fractions, so
real runs showed ``+4775.4pp``) fails here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest

from esper_engine.contracts import (
    Attribution,
    BatchStats,
    CommandAck,
    EpochSummary,
    Event,
    GovernorPanic,
    GovernorRollback,
    PolicyUpdate,
    RunStarted,
    SeedStage,
    SeedTransition,
)
from overwatch.app import OverwatchApp
from overwatch.sources import ReplaySource
from overwatch.widgets.env_panel import EnvPanel
from overwatch.widgets.env_row import EnvRow
from overwatch.widgets.formatting import (
    STAGE_GLYPHS,
    epoch_number,
    measured_at,
    num,
    pct,
    points,
    rate,
    signed,
)
from tests.console.fixtures import REAL_RUN, REAL_RUN_LM, epoch_stops, real_events, run_async

WIDE = (120, 40)
SMALL = (80, 24)
# Seeds a slot can hold before any attribution could measure them (alpha 0 until they blend).
_NEW_SEED = frozenset({SeedStage.DORMANT, SeedStage.GERMINATED, SeedStage.TRAINING})


# --- what each env's figures come from, read from the events ------------------------------------


@dataclass
class Sources:
    """The events behind one env's figures at a point of the recording."""

    summary: EpochSummary | None = None
    since: list[Event] = field(default_factory=list)  # this env's events after ``summary``
    attribution: Attribution | None = None  # the latest of the summary's episode
    measured: dict[str, Attribution] = field(default_factory=dict)  # slot -> its seed's latest
    clip_threshold: float | None = None  # the last one stated for this env

    @property
    def batch(self) -> BatchStats | None:
        batches = [e for e in self.since if type(e) is BatchStats]
        return batches[-1] if batches else None

    @property
    def grad_period(self) -> tuple[float, float]:
        """(mean post-clip grad norm over the finite steps, clipped share) of the epoch in
        progress when it has batches, else of the summarised one: the panel shows one period."""
        batches = [e for e in self.since if type(e) is BatchStats]
        if not batches:
            assert self.summary is not None
            return self.summary.grad_norm_post_clip, self.summary.clipped_fraction
        last = batches[-1]
        batches = [b for b in batches if (b.episode, b.epoch) == (last.episode, last.epoch)]
        finite = [b.grad_norm_post_clip for b in batches if math.isfinite(b.grad_norm_post_clip)]
        mean = sum(finite) / len(finite) if finite else math.nan
        return mean, sum(b.clipped for b in batches) / len(batches)

    @property
    def quiet_since_summary(self) -> bool:
        """Nothing but batches (and attributions, which change no slot) since the summary: every
        other figure is still the summary's."""
        return all(type(e) in (BatchStats, Attribution) for e in self.since)

    @property
    def samples_per_s(self) -> float:
        batch = self.batch
        if batch is not None and batch.samples_per_s > 0:
            return batch.samples_per_s
        return self.summary.samples_per_s if self.summary else 0.0


def sources_at(events: list[Event], n_envs: int) -> list[Sources]:
    """Per env: the latest summary, what came after it, and each seed's latest attribution
    (since it germinated, in the same episode)."""
    envs = [Sources() for _ in range(n_envs)]
    for event in events:
        if type(event) is CommandAck and event.command == "SetClipThreshold" and event.accepted:
            for env in envs if event.env is None else [envs[event.env]]:
                env.clip_threshold = event.value
        if event.env is None:
            continue
        s = envs[event.env]
        if type(event) is EpochSummary:
            s.summary, s.since, s.clip_threshold = event, [], event.clip_threshold
            for slot in event.slots:
                if slot.stage in _NEW_SEED:
                    s.measured.pop(slot.slot_id, None)
            if s.attribution is not None and s.attribution.episode != event.episode:
                s.attribution, s.measured = None, {}
            continue
        s.since.append(event)
        if type(event) is BatchStats:
            s.clip_threshold = event.clip_threshold
        elif type(event) is Attribution:
            s.attribution = event
            s.measured.update(dict.fromkeys(event.shapley, event))
        elif type(event) is SeedTransition and event.to_stage in _NEW_SEED:
            s.measured.pop(event.slot_id, None)
    return envs


# --- the screen, read back ------------------------------------------------------------------------


def screen(app: OverwatchApp) -> list[str]:
    """The characters on screen, one string per row, as the terminal would show them."""
    return [strip.text for strip in app.screen._compositor.render_strips()]


def crop(lines: list[str], widget) -> list[str]:
    """The rows of ``widget`` (border included) cut out of the screen."""
    r = widget.region
    return [line[r.x : r.x + r.width] for line in lines[r.y : r.y + r.height]]


class Mismatches(list):
    """The figures that differ; ``compared`` names every kind of figure read off the screen."""

    def __init__(self) -> None:
        super().__init__()
        self.compared: set[str] = set()

    def check(self, where: str, what: str, shown: str | None, expected: str | None) -> None:
        if shown is not None:
            self.compared.add(what)
        if shown != expected:
            self.append(f"{where} {what}: screen {shown!r}, expected {expected!r}")


def _find(pattern: str, text: str) -> re.Match | None:
    return re.search(pattern, text)


def _group(pattern: str, text: str, n: int = 1) -> str | None:
    match = re.search(pattern, text)
    return match.group(n) if match else None


def check_units(where: str, text: str, bad: Mismatches) -> None:
    """Every fraction on screen reads as 0..100%, every Shapley value within +-100pp."""
    for value in re.findall(r"(-?\d+(?:\.\d+)?)%", text):
        if not 0.0 <= float(value) <= 100.0:
            bad.append(f"{where}: {value}% is not a fraction of 100")
    for value in re.findall(r"([+-]\d+(?:\.\d+)?)pp", text):
        if abs(float(value)) > 100.0:
            bad.append(f"{where}: {value}pp is more than the whole accuracy")


def check_panel(
    where: str, rows: list[str], src: Sources, language_model: bool, bad: Mismatches
) -> None:
    """One env panel (border rows included) against the events behind it."""
    summary = src.summary
    assert summary is not None
    content = [row[2:-2].rstrip() for row in rows[1:-1]]
    text = "\n".join(content)
    check_units(where, text, bad)
    batch = src.batch
    latest = batch or summary
    bad.check(
        where,
        "subtitle (epoch, samples/s)",
        _group(r"(epoch \d+ · [\d,]+/s)", rows[-1]),
        # the epoch in progress, and the throughput of the last one summarised
        f"epoch {epoch_number(latest.epoch)} · {rate(summary.samples_per_s)}",
    )
    bad.check(where, "val accuracy", _group(r"acc\s+(\S+)", text), pct(summary.val_accuracy))
    bad.check(where, "val loss", _group(r"(?m)loss\s+(\S+)", text), num(summary.val_loss))
    if language_model:
        bad.check(where, "perplexity", _group(r"ppl (\S+)", text), num(summary.perplexity, 1))
    grad, clipped = src.grad_period
    shown_grad = num(grad, 2) if math.isfinite(grad) or src.batch is None else "-"
    bad.check(where, "grad norm", _group(r"grad (\S+?)(/| \(no clip)", text), shown_grad)
    threshold = src.clip_threshold
    bad.check(
        where,
        "clip threshold",
        _group(r"grad \S+?(/\S+| \(no clip\))", text),
        f"/{num(threshold, 2)}" if threshold else " (no clip)",
    )
    bad.check(where, "clipped %", _group(r"clipped (\S+)", text), pct(clipped, 0))
    train = _find(r"train loss (\S+) · acc (\S+) · params ([\d,]+)(?:\+([\d,]+))?", text)
    if train:  # shown when the panel has room
        bad.check(where, "train loss", train.group(1), num(summary.train_loss))
        bad.check(where, "train accuracy", train.group(2), pct(summary.train_accuracy))
        bad.check(where, "host params", train.group(3), f"{summary.host_params:,}")
        seeds = f"{summary.seed_params:,}" if summary.seed_params else None
        bad.check(where, "seed params", train.group(4), seeds)
    if src.quiet_since_summary:
        check_slots(where, content, src, bad)
        check_governor(where, text, summary, bad)
    action = _find(r"(?m)^act (.+) · reward (\S+)$", text)
    bad.check(where, "action", action and action.group(1), summary.last_action)
    bad.check(where, "reward", action and action.group(2), signed(summary.reward))


def check_slots(where: str, content: list[str], src: Sources, bad: Mismatches) -> None:
    summary = src.summary
    stages = "|".join(stage.value for stage in SeedStage)
    shown = {}
    for line in content:
        match = re.match(rf"(\S+)\s+({stages})(?:\s+(\S+)\s+α(\S+)(?:\s+([+-]\S+pp\S*))?)?", line)
        if match:
            shown[match.group(1)] = match.groups()[1:]
    more = _group(r"\+(\d+) more slots", "\n".join(content))
    bad.check(where, "slots shown", str(len(shown) + int(more or 0)), str(len(summary.slots)))
    for slot in summary.slots:
        if slot.slot_id not in shown:
            if not more:
                bad.append(f"{where} slot {slot.slot_id} missing")
            continue
        stage, blueprint, alpha, value = shown.pop(slot.slot_id)
        slot_where = f"{where} {slot.slot_id}"
        bad.check(slot_where, "stage", stage, slot.stage.value)
        if slot.stage == SeedStage.DORMANT:
            continue
        bad.check(slot_where, "blueprint", blueprint, (slot.blueprint or "-")[:10])
        bad.check(slot_where, "alpha", alpha, f"{slot.alpha:.2f}")
        bad.check(slot_where, "shapley", value, expected_shapley(src, slot.slot_id))
    check_attribution_line(where, "\n".join(content), src, bad)


def expected_shapley(src: Sources, slot_id: str) -> str | None:
    """The seed's value from its latest attribution; marked with its epoch unless it is the
    epoch on screen."""
    measured = src.measured.get(slot_id)
    if measured is None:
        return None
    value = points(measured.shapley[slot_id])
    current = measured is src.attribution and on_screen(measured, src)
    return value if current else value + measured_at(measured.epoch)


def on_screen(attribution: Attribution, src: Sources) -> bool:
    """The attribution measured the epoch whose summary is on screen: not an earlier one, nor
    the next one, whose attribution arrives just before its summary."""
    summary = src.summary
    return (attribution.episode, attribution.epoch) == (summary.episode, summary.epoch)


def check_attribution_line(where: str, text: str, src: Sources, bad: Mismatches) -> None:
    line = _find(
        r"shapley(@e\d+)? v\(all\) (\S+%) · v\(∅\) (\S+%)(?: · (exact|sampled)(?:, (\d+) c)?)?",
        text,
    )
    a = src.attribution
    if a is None:
        bad.check(where, "attribution line", line and line.group(0), None)
        return
    if line is None:
        return  # no room for it in this panel
    current = on_screen(a, src)
    bad.check(where, "attribution epoch", line.group(1), None if current else measured_at(a.epoch))
    bad.check(where, "v(all)", line.group(2), pct(a.full_value))
    bad.check(where, "v(none)", line.group(3), pct(a.empty_value))
    if line.group(4):
        bad.check(where, "method", line.group(4), "exact" if a.exact else "sampled")
    if line.group(5):
        bad.check(where, "coalitions", line.group(5), str(a.coalitions))
    if current and abs(a.full_value - src.summary.val_accuracy) > 0.02:
        # v(all) is the accuracy of the same model on the same validation batches.
        accuracy = src.summary.val_accuracy
        bad.append(f"{where}: v(all) {a.full_value} is not the val accuracy {accuracy}")


def check_governor(where: str, text: str, summary: EpochSummary, bad: Mismatches) -> None:
    gov = _find(
        r"gov panics (\d+) \((\d+) total\) · rollbacks (\d+)"
        r"(?: · last (\w+))?(?: · skipped (\d+))?",
        text,
    )
    if gov is None:
        bad.append(f"{where}: no governor line")
        return
    bad.check(where, "consecutive panics", gov.group(1), str(summary.consecutive_panics))
    bad.check(where, "total panics", gov.group(2), str(summary.total_panics))
    bad.check(where, "rollbacks", gov.group(3), str(summary.rollbacks))
    reason = summary.last_panic_reason
    bad.check(where, "last panic", gov.group(4), None if reason is None else str(reason))
    if gov.group(5) is not None:
        bad.check(where, "skipped steps", gov.group(5), str(summary.skipped_steps))


def check_row(where: str, row: str, src: Sources, bad: Mismatches) -> None:
    """The compact one-line row of the env."""
    summary = src.summary
    check_units(where, row, bad)
    match = re.match(
        r".env(\d+)\s+(\S+)\s.*?\sL\s*(\S+) g(\S+?)/(\S+) (\S+) P(\d+)/(\d+) R(\d+) (.*?)\s*$", row
    )
    if match is None:
        bad.append(f"{where}: row unreadable: {row!r}")
        return
    bad.check(where, "row env", match.group(1), str(summary.env + 1))
    bad.check(where, "row val accuracy", match.group(2), pct(summary.val_accuracy))
    bad.check(where, "row val loss", match.group(3), num(summary.val_loss, 2))
    grad = src.grad_period[0]
    shown_grad = num(grad, 2) if math.isfinite(grad) or src.batch is None else "-"
    bad.check(where, "row grad norm", match.group(4), shown_grad)
    bad.check(where, "row clip threshold", match.group(5), num(src.clip_threshold, 2))
    if src.quiet_since_summary:
        glyphs = "".join(STAGE_GLYPHS[slot.stage] for slot in summary.slots)
        bad.check(where, "row slots", match.group(6), glyphs)
        bad.check(where, "row consecutive panics", match.group(7), str(summary.consecutive_panics))
        bad.check(where, "row total panics", match.group(8), str(summary.total_panics))
        bad.check(where, "row rollbacks", match.group(9), str(summary.rollbacks))
    action = match.group(10)
    if action.endswith("…"):  # cut at the terminal's edge
        ok = summary.last_action.startswith(action[:-1])
        bad.check(where, "row action", action if ok else action[:-1], action)
    else:
        bad.check(where, "row action", action, summary.last_action)


def check_header(where: str, lines: list[str], envs: list[Sources], bad: Mismatches) -> None:
    shown = _group(r"([\d,]+|-) samples/s", "\n".join(lines[:3]))
    total = sum(src.samples_per_s for src in envs)
    if shown is not None:
        bad.check(where, "header samples/s", shown, f"{total:,.0f}" if total > 0 else "-")


def check_ppo(
    where: str, header: str, policy: str, update: PolicyUpdate | None, bad: Mismatches
) -> None:
    if policy != "ppo":  # a policy that never updates has no PPO figures, but the timing
        bad.check(where, "no PPO line", _group(r"(last PPO update)", header), None)
        bad.check(where, "timing line", _group(r"(elapsed \S+ · ETA \S+)", header) and "ok", "ok")
        return
    if update is None:
        bad.check(where, "PPO", _group(r"last PPO update (none yet)", header), "none yet")
        return
    expected = (
        f"#{update.update} · policy loss {signed(update.policy_loss)}"
        f" · value loss {num(update.value_loss)} · entropy {num(update.entropy)}"
        f" · KL {num(update.approx_kl, 4)} · clip frac {num(update.clip_fraction, 2)}"
    )
    shown = _group(r"last PPO update (.*?)( · expl|$)", header)
    if shown is not None and shown.rstrip().endswith("…"):  # fit() cut it at a figure's edge
        shown = shown.rstrip()[:-1]  # the figures shown must be whole; those cut off are not read
        if expected.startswith(f"{shown} · "):
            expected = shown
    bad.check(where, "PPO", shown, expected)


# --- driving the replay ---------------------------------------------------------------------------


def check_points(events: list[Event]) -> list[tuple[str, int]]:
    """(label, position): the end of every epoch, and just after the next epoch's first batch of
    every env (the epoch in progress: grad norm and samples/s come from BatchStats)."""
    n_envs = events[0].n_envs
    out = []
    for stop in epoch_stops(events):
        e = events[stop - 1]
        out.append((f"episode {e.episode + 1} epoch {e.epoch + 1} end", stop))
        batches = [i for i in range(stop, len(events)) if type(events[i]) is BatchStats]
        seen: set[int] = set()
        for i in batches:
            seen.add(events[i].env)
            if len(seen) == n_envs:
                out.append((f"episode {e.episode + 1} epoch {e.epoch + 2} batches", i + 1))
                break
            if type(events[i + 1]) is EpochSummary:
                break
    # The moment an attribution has arrived and its epoch's summary not yet (the next epoch's
    # Shapley values beside the last epoch's accuracy): the first two in the run.
    early = [
        (f"env {a.env + 1} episode {a.episode + 1} epoch {a.epoch + 1} attributed", i + 1)
        for i, a in enumerate(events)
        if type(a) is Attribution and type(events[i + 1]) is not EpochSummary
    ]
    return sorted(out + early[:2], key=lambda point: point[1])


async def screen_mismatches(events: list[Event], *, every_env: bool = True) -> Mismatches:
    """Replay ``events`` and read the screen at every check point, in both layouts."""
    started = events[0]
    assert isinstance(started, RunStarted)
    lm = started.task_kind == "language_model"
    bad = Mismatches()
    points_ = check_points(events)
    source = ReplaySource.from_events(events, clock=lambda: 0.0)
    app = OverwatchApp(source, clock=lambda: 0.0)
    async with app.run_test(size=WIDE) as pilot:
        source.playing = False
        for size in (WIDE, SMALL):
            await pilot.resize_terminal(*size)
            for label, position in points_:
                source.seek(position)
                await app.tick()
                await pilot.pause()
                envs = sources_at(events[:position], started.n_envs)
                updates = [e for e in events[:position] if type(e) is PolicyUpdate]
                if size == WIDE:
                    lines = screen(app)
                    check_header(f"{label} (wide)", lines, envs, bad)
                    update = updates[-1] if updates else None
                    check_ppo(f"{label} (wide)", lines[2], started.policy, update, bad)
                    for panel in app.main._panels:
                        where = f"{label}, env {panel.env + 1} (wide)"
                        check_panel(where, crop(lines, panel), envs[panel.env], lm, bad)
                    continue
                for env in range(started.n_envs) if every_env else [0]:
                    await pilot.press(str(env + 1))
                    await pilot.pause()
                    lines = screen(app)
                    where = f"{label}, env {env + 1} (80x24)"
                    detail = app.query_one("#detail", EnvPanel)
                    assert detail.env == env
                    check_panel(where, crop(lines, detail), envs[env], lm, bad)
                    row = next(r for r in app.query(EnvRow) if r.env == env)
                    check_row(where, crop(lines, row)[0], envs[env], bad)
                    check_header(where, lines, envs, bad)
    return bad


@pytest.mark.parametrize("path", [REAL_RUN, REAL_RUN_LM], ids=["images", "language-model"])
@run_async
async def test_every_figure_on_screen_is_the_field_it_comes_from(path: Path) -> None:
    events = real_events(path)
    bad = await screen_mismatches(events)
    assert not bad, f"{len(bad)} figures differ from their events:\n" + "\n".join(bad[:25])
    assert EVERY_FIGURE <= bad.compared, f"never read: {EVERY_FIGURE - bad.compared}"
    if path == REAL_RUN_LM:
        assert {"perplexity", "PPO"} <= bad.compared
    else:
        attribution = {"shapley", "method", "v(all)", "v(none)", "attribution epoch", "coalitions"}
        assert attribution | {"last panic"} <= bad.compared


# Every kind of figure the screens show, read at least once in each recording.
EVERY_FIGURE = {
    *("subtitle (epoch, samples/s)", "val accuracy", "val loss", "grad norm", "clip threshold"),
    *("clipped %", "train loss", "train accuracy", "host params", "seed params"),
    *("slots shown", "stage", "blueprint", "alpha"),
    *("consecutive panics", "total panics", "rollbacks", "action", "reward"),
    *("row env", "row val accuracy", "row val loss", "row grad norm", "row clip threshold"),
    *("row slots", "row consecutive panics", "row total panics", "row rollbacks", "row action"),
    "header samples/s",
}


def _in_points(event: Event) -> Event:
    """An Attribution as the schema-1 engine emitted it: accuracy points, not fractions."""
    if type(event) is not Attribution:
        return event
    return msgspec.structs.replace(
        event,
        shapley={k: 100 * v for k, v in event.shapley.items()},
        full_value=100 * event.full_value,
        empty_value=100 * event.empty_value,
    )


@run_async
async def test_the_check_catches_attributions_in_the_wrong_unit() -> None:
    """Issue 12's bug, on purpose: the same run with Shapley figures x100 must not pass."""
    events = real_events()
    stops = epoch_stops(events)
    cut = stops[5]  # a few epochs in: seeds are blending and attributed
    events = [_in_points(e) for e in events[:cut]]
    bad = await screen_mismatches(events, every_env=False)
    assert any("is not a fraction of 100" in m for m in bad)
    assert any("more than the whole accuracy" in m for m in bad)
    assert any("is not the val accuracy" in m for m in bad)


def test_the_recording_has_what_the_screens_need() -> None:
    """The fixture covers the rare states (scripts/make_fixture.py checks them as it records)."""
    events = real_events()
    assert any(type(e) is GovernorPanic for e in events)
    assert any(type(e) is GovernorRollback for e in events)
    stages = {e.to_stage for e in events if type(e) is SeedTransition}
    assert {SeedStage.BLENDING, SeedStage.HOLDING, SeedStage.FOSSILIZED} <= stages
    assert all(
        math.isfinite(v) and -1.0 <= v <= 1.0
        for e in events
        if type(e) is Attribution
        for v in (*e.shapley.values(), e.full_value, e.empty_value)
    )
    assert any(type(e) is PolicyUpdate for e in real_events(REAL_RUN_LM))
