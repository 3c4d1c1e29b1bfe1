"""The focused env's plots (issue 25): each metric (m) drawn from what a real-engine recording
holds, log scale (y), EMA smoothing (z), and an outlier that no longer flattens the curve."""

from __future__ import annotations

import math

from esper_engine.contracts import Attribution, EpochSummary, PolicyUpdate
from overwatch.widgets.env_plot import PLOT_MODES, EnvPlot, ema, log10, robust_limits
from tests.console.fixtures import REAL_RUN_LM, REAL_RUN_OUTLIER, real_events, replay_app, run_async

BIG = (180, 45)  # plots show from 170x36


def summaries(path):
    return [e for e in real_events(path) if isinstance(e, EpochSummary)]


def ys(plot, i=0) -> list[float]:
    return [float(y) for y in plot._datasets[i].y]


def test_robust_limits_leave_out_the_diverged_losses():
    losses = [s.val_loss for s in summaries(REAL_RUN_OUTLIER)]
    big = [v for v in losses if v > 1000]
    assert len(big) == 2 and max(big) > 1e5  # the fault's epochs, among losses near 2
    lo, hi = robust_limits(losses)
    assert all(lo <= v <= hi for v in losses if v < 1000)
    assert hi < 10 and all(v > hi for v in big)
    # a series with no outlier (the accuracies) scales to every point: no limits
    assert robust_limits([s.val_accuracy for s in summaries(REAL_RUN_OUTLIER)]) is None
    assert robust_limits([1.0, 2.0, 1e6]) is None  # too few points to call one an outlier


def test_ema_and_log():
    assert ema([1.0, 3.0], 0.5) == [1.0, (0.5 * 1 + 3) / 1.5]  # debiased from the first point
    assert ema([2.0, math.nan, 2.0], 0.9)[2] == 2.0  # a NaN passes through, out of the average
    assert log10([100.0, 0.0])[0] == 2.0 and math.isnan(log10([100.0, 0.0])[1])


@run_async
async def test_an_outlier_is_clipped_and_marked_not_flattening_the_loss() -> None:
    app = replay_app(epochs_in=16, path=REAL_RUN_OUTLIER)
    async with app.run_test(size=BIG) as pilot:
        await pilot.pause()
        plot = app.query_one("#wide-plot", EnvPlot)
        assert app.main.plot_shown and plot.mode == "val"
        _, loss, _ = plot._plots
        assert loss._user_y_max is not None and loss._user_y_max < 10  # not 4e5
        assert plot.clipped == 2 and "▲2 clipped" in str(plot._title.render())
        drawn = ys(loss)
        assert max(drawn) <= loss._user_y_max and len(drawn) == 16
        assert any(d.marker == "▲" for d in loss._datasets[1:])  # the clipped points, marked


@run_async
async def test_each_metric_draws_what_the_recording_holds() -> None:
    events = real_events(REAL_RUN_OUTLIER)
    epochs = [e for e in events if isinstance(e, EpochSummary)]
    slots = sorted({s for e in events if isinstance(e, Attribution) for s in e.shapley})
    app = replay_app(epochs_in=16, path=REAL_RUN_OUTLIER)
    async with app.run_test(size=BIG) as pilot:
        await pilot.pause()
        plot = app.query_one("#wide-plot", EnvPlot)
        acc, loss, grad = plot._plots
        await pilot.press("P")  # train vs val
        assert plot.mode == "train/val" and len(acc._datasets) == 2
        assert ys(acc, 0) == [100 * e.train_accuracy for e in epochs]
        assert ys(acc, 1) == [100 * e.val_accuracy for e in epochs]
        await pilot.press("P")  # the grad norm alone
        # the top plot takes the whole height: the two below are hidden
        assert plot.mode == "grad" and acc.display and not (loss.display or grad.display)
        assert ys(acc) == [g for _, g in app.state.envs[0].grad_points]
        await pilot.press("P")  # Shapley per seed over time, a series per slot measured
        lines = [d for d in acc._datasets if type(d).__name__ == "LinePlot"]
        assert plot.mode == "shapley" and len(lines) == len(slots) >= 2
        measured = [e for e in events if isinstance(e, Attribution) and slots[0] in e.shapley]
        first = [100 * e.shapley[slots[0]] for e in measured]
        assert [float(y) for y in lines[0].y] == _clipped(first, acc)
        assert len(lines[0].x) == len(measured)
        assert all(slot in str(plot._title.render()) for slot in slots)
        await pilot.press("P")  # PPO losses: a heuristic run has none, and says so
        assert plot.mode == "ppo" and "no policy updates" in str(plot._title.render())
        await pilot.press("P")  # the training FLOPs of the episode so far
        assert plot.mode == "flops" and ys(acc) == [float(e.train_flops) for e in epochs]
        await pilot.press("P")
        assert plot.mode == PLOT_MODES[0] and loss.display and grad.display


@run_async
async def test_ppo_losses_log_scale_and_smoothing() -> None:
    updates = [e for e in real_events(REAL_RUN_LM) if isinstance(e, PolicyUpdate)]
    app = replay_app(epochs_in=9, path=REAL_RUN_LM)  # past the last epoch: the end
    async with app.run_test(size=BIG) as pilot:
        await pilot.pause()
        plot = app.query_one("#wide-plot", EnvPlot)
        policy, value, entropy = plot._plots
        for _ in range(PLOT_MODES.index("ppo")):
            await pilot.press("P")
        assert ys(policy) == [u.policy_loss for u in updates]
        assert ys(value) == [u.value_loss for u in updates]
        await pilot.press("P", "P")  # back to the validation plots, then log and EMA
        await pilot.press("y")
        view = app.state.envs[0]
        losses = [v for _, _, v in view.epoch_points]
        assert plot.log_scale and ys(value) == log10(losses)
        assert "log" in str(plot._title.render())
        await pilot.press("z")
        assert plot.smoothing == 0.6 and len(value._datasets) == 2  # raw (grey), then its EMA
        assert ys(value, 1) == ema(log10(losses), 0.6)
        await pilot.press("z", "z")
        assert plot.smoothing == 0.0 and len(value._datasets) == 1


@run_async
async def test_the_plot_keys_are_in_the_help() -> None:
    app = replay_app(epochs_in=2, path=REAL_RUN_OUTLIER)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        rows = {key: text for key, text, _ in app.main.help_rows()}
        assert "Plot metric" in rows["P"] and "log scale" in rows["y"] and "EMA" in rows["z"]
        await pilot.press("P")  # no plot at 120x40: the notice says where plots show
        assert plot_notice(app)


def _clipped(values: list[float], plot) -> list[float]:
    """``values`` as drawn: at the plot's limits' inset when it has limits (robust_limits)."""
    if plot._user_y_max is None:
        return values
    inset = 0.03 * (plot._user_y_max - plot._user_y_min)
    lo, hi = plot._user_y_min + inset, plot._user_y_max - inset
    return [min(max(v, lo), hi) for v in values]


def plot_notice(app) -> bool:
    return any("plots show from 170x36" in str(n.message) for n in app._notifications)
