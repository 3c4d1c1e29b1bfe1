"""The run at a glance: identity, progress, throughput, data freshness, trainer and PPO state."""

from __future__ import annotations

from rich.style import Style
from rich.text import Text

from esper_engine.contracts import RunStatus
from overwatch.state import ConsoleState
from overwatch.widgets.formatting import (
    duration,
    episode_number,
    epoch_number,
    estimate_duration,
    fit,
    flops,
    host_label,
    memory_size,
    num,
    plural,
    short_bytes,
    signed,
)
from overwatch.widgets.lines import LineWidget
from overwatch.widgets.sparkline import hbar

PROGRESS_WIDTH = 12


class RunHeader(LineWidget):
    """Two or three lines; when space is short, the least important segments are dropped."""

    COMPONENT_CLASSES = {
        "header--title",
        "header--label",
        "header--dim",
        "header--bar",
        "header--live",
        "header--stale",
        "header--replay",
        "header--paused",
        "header--bad",
        "header--good",
        "header--alert",
    }

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.state: ConsoleState | None = None
        self.liveness = "WAITING"
        self.now = 0.0
        self.alerts = 0  # not yet acknowledged
        self.sort = "id"
        self.layout_choice = "auto"  # the operator's choice with t; auto is not shown
        self.env_filter = ""  # the env filter (\ or F4) and how many envs it lists; "": none
        self._shown: tuple | None = None
        self._live_shown = -1  # the state's live_revision last drawn

    def update(
        self,
        state: ConsoleState,
        *,
        liveness: str,
        now: float = 0.0,
        alerts: int = 0,
        sort: str = "id",
        layout: str = "auto",
        live: bool = True,
        env_filter: str = "",
    ) -> None:
        """Redraw when a figure up here may have changed; ``live``: whether BatchStats alone
        (the run's samples/s) may redraw (the app's live cadence)."""
        elapsed = state.elapsed(now)
        shown = (
            id(state),
            state.revision,
            state.trainer_state,
            state.dropped,
            liveness,
            None if elapsed is None else int(elapsed),
            alerts,
            sort,
            layout,
            state.setup,
            env_filter,
        )
        if shown == self._shown and (not live or state.live_revision == self._live_shown):
            return
        self._shown, self._live_shown = shown, state.live_revision
        self.state = state
        self.liveness = liveness
        self.now, self.alerts, self.sort = now, alerts, sort
        self.layout_choice = layout
        self.env_filter = env_filter
        self.redraw()  # most events change no figure up here: usually nothing to repaint

    def build_lines(self, width: int, height: int) -> list[Text]:
        if self.state is None:
            return [Text("OVERWATCH", style=self._style("header--title"))]
        state = self.state
        wide = height >= 3  # a third line for the full PPO figures
        ppo = state.policy_updates  # a heuristic or static policy never updates: no PPO figures
        short = [self._ppo_short(state)] if ppo and not wide else []
        lines = [
            self._fit(self._identity(state), self._status(), width),
            # The timing gets the third line when PPO figures do not need it.
            self._fit(
                self._progress(state, timing=ppo or not wide, width=width) + short, Text(), width
            ),
        ]
        if wide:
            third = self._ppo(state) if ppo else self._timing(state)
            fit(third, width)  # a figure is whole or gone, never "-0" of "-0.13"
            lines.append(third)
        return lines

    def _fit(self, segments: list[Text], right: Text, width: int) -> Text:
        """Segments in order, dropping trailing ones that do not fit; ``right`` at the end."""
        line = Text()
        room = width - right.cell_len - 1
        for segment in segments:
            if line.cell_len + segment.cell_len > room:
                break
            line.append_text(segment)
        line.append(" " * max(width - line.cell_len - right.cell_len, 0))
        line.append_text(right)
        line.truncate(width)
        return line

    def _identity(self, state: ConsoleState) -> list[Text]:
        title = Text(" OVERWATCH ", style=self._style("header--title"))
        run = Text(f" {state.run_id or '-'}")
        task = Text(f" · {state.task or '-'}")
        policy = Text(f" · {state.policy or '-'}", style=self._style("header--dim"))
        envs = Text(
            f" · {plural(state.n_envs, 'env') if state.n_envs else '- envs'}"
            f" · {state.device or '-'}",
            style=self._style("header--dim"),
        )
        host = host_label(state.host_kind, state.host_sizes, state.host_params)
        hosts = [Text(f" · {host}")] if host else []
        return [title, run, task, *hosts, policy, envs]

    def _status(self) -> Text:
        kind = {
            "LIVE": "header--live",
            "STALE": "header--stale",
            "REPLAY": "header--replay",
            "ENDED": "header--dim",
        }.get(self.liveness, "header--dim")
        text = Text()
        if self.alerts:
            text.append(f"⚠ {plural(self.alerts, 'alert')} (a) ", self._style("header--alert"))
            text.append("│ ", self._style("header--label"))
        text.append(f"● {self.liveness}", style=self._style(kind))
        # The trainer's state as its events tell it (a live source reports a thread that died
        # without a word as a crash), or "starting" from the run's plan before the first event.
        trainer = self.state.trainer_state if self.state else "waiting"
        trainer_kind = {
            "running": "header--good",
            "paused": "header--paused",
            RunStatus.CRASHED: "header--bad",
            "stopping": "header--paused",
        }.get(trainer, "header--dim")
        text.append(" │ trainer ", self._style("header--label"))
        text.append(trainer, self._style(trainer_kind))
        if trainer == "starting" and self.state is not None and self.state.setup:
            text.append(f" · {self.state.setup}", self._style("header--dim"))
        return text

    def _progress(self, state: ConsoleState, *, timing: bool, width: int = 0) -> list[Text]:
        label, dim = self._style("header--label"), self._style("header--dim")
        progress = self._position(state, PROGRESS_WIDTH)
        rate = state.samples_per_s
        throughput = (
            Text(" │ ", style=dim)
            .append(f"{rate:,.0f}" if rate > 0 else "-")
            .append(" samples/s", label)
        )
        compute = (
            [Text(" │ ", style=dim).append(flops(state.total_flops)).append(" FLOPs", label)]
            if state.total_flops
            else []  # a recording older than the figure, or no epoch yet
        )
        clip = Text(" │ clip ", style=label).append(num(state.clip_threshold, 2))
        dropped = Text(" │ dropped ", style=label).append(
            f"{state.dropped}", self._style("header--bad") if state.dropped else Style()
        )
        used = [self._resources(state)] if state.resources else []  # none in older recordings
        segments = [progress, throughput, *compute, *used, clip, dropped]
        if timing:
            segments.insert(1, self._elapsed_eta(state))
            # Narrow (80 columns): the run's FLOPs come before samples/s, and elapsed loses its
            # word, so the compute shows beside the ETA instead of being dropped off the end.
            if compute and sum(t.cell_len for t in segments[:4]) > width - 1:
                segments[1:4] = [self._elapsed_eta(state, short=True), *compute, throughput]
        if used and sum(t.cell_len for t in segments[: segments.index(used[0]) + 1]) > width - 1:
            # Narrow: the resources come before samples/s, with a shorter progress bar.
            segments.remove(throughput)
            segments.insert(segments.index(used[0]) + 1, throughput)
            segments[0] = self._position(state, PROGRESS_WIDTH // 2)
        if used and sum(t.cell_len for t in segments) > width - 1:
            # Short of room: a zero dropped count goes first, then the resources' memory.
            if not state.dropped:
                segments.remove(dropped)
            at = segments.index(used[0])
            keep = at + 2 if segments[at + 1 : at + 2] == [clip] else at + 1  # clip stays too
            if sum(t.cell_len for t in segments[:keep]) > width - 1:
                segments[at] = self._resources(state, short=True)  # CPU % only, per rank
        if not state.epochs_done and (state.epoch_s_estimate or state.memory_estimate):
            segments.insert(1, self._estimate(state))  # before elapsed: there is no ETA yet
        if self.env_filter:  # second, so that 80 columns still show it: most rows are hidden
            filtered = Text(" │ filter ", style=label).append(self.env_filter, "reverse")
            segments.insert(1, filtered)
        if self.sort != "id":
            segments.append(Text(" │ sort ", style=label).append(self.sort))
        if self.layout_choice != "auto":
            segments.append(Text(" │ layout ", style=label).append(self.layout_choice))
        return segments

    def _position(self, state: ConsoleState, bar: int) -> Text:
        """The epoch in progress (or the last summarised), as every env panel's border says
        it ("-" before the first word of one), and the run's progress bar ``bar`` cells wide."""
        label = self._style("header--label")
        at = state.at
        progress = Text(" episode ", style=label)
        progress.append(f"{episode_number(at[0]) if at else '-'}/{state.episodes or '-'}")
        progress.append(" · epoch ", label)
        progress.append(f"{epoch_number(at[1]) if at else '-'}/{state.epochs or '-'} ")
        done = state.epoch_fraction()  # moves inside an epoch with its progress events
        progress.append(hbar(done, bar).replace(" ", "░"), self._style("header--bar"))
        return progress.append(f" {100 * done:3.0f}%")

    def _resources(self, state: ConsoleState, *, short: bool = False) -> Text:
        """Each rank's CPU (% of one core), resident memory and, on a GPU, torch's allocated /
        reserved memory and the device's utilisation where the driver tells it; ``short``:
        the percentages only (a narrow terminal, several ranks)."""
        label = self._style("header--label")
        text = Text(" │ ", style=self._style("header--dim"))
        ranked = len(state.resources) > 1
        for i, (rank, sample) in enumerate(sorted(state.resources.items())):
            if i:
                text.append(" ")
            text.append(f"r{rank} " if ranked else "cpu ", label)
            text.append(f"{sample.cpu_percent:.0f}%")
            if short:
                if sample.gpu_utilization is not None:
                    text.append(f"/{sample.gpu_utilization:.0f}%")
                continue
            text.append(f" {short_bytes(sample.rss_bytes)}")
            if sample.gpu_allocated is not None:
                reserved = sample.gpu_reserved or 0
                text.append(" gpu " if not ranked else " ", label)
                text.append(f"{short_bytes(sample.gpu_allocated)}/{short_bytes(reserved)}")
                if sample.gpu_utilization is not None:
                    text.append(f" {sample.gpu_utilization:.0f}%")
        return text

    def _estimate(self, state: ConsoleState) -> Text:
        """What the run was estimated to cost, until its first epoch tells the real time."""
        label = self._style("header--label")
        text = Text(" │ est. ", style=label)
        if state.epoch_s_estimate:
            text.append(f"{estimate_duration(state.epoch_s_estimate)}/epoch")
        if state.memory_estimate:
            text.append(" · " if state.epoch_s_estimate else "")
            text.append(memory_size(state.memory_estimate))
        return text

    def _elapsed_eta(self, state: ConsoleState, *, short: bool = False) -> Text:
        label = self._style("header--label")
        text = Text(" │ " if short else " │ elapsed ", style=label)
        text.append(duration(state.elapsed(self.now)))
        return text.append(" ETA ", label).append(duration(state.eta()))

    def _timing(self, state: ConsoleState) -> Text:
        """The third line of a run whose policy never updates: elapsed, ETA, epoch time."""
        label = self._style("header--label")
        text = Text(" elapsed ", style=label).append(duration(state.elapsed(self.now)))
        text.append(" · ETA ", label).append(duration(state.eta()))
        text.append(" · epoch time ", label).append(duration(state.epoch_seconds))
        return text

    def _ppo(self, state: ConsoleState) -> Text:
        """Every figure of the last policy update, labelled (wide layout)."""
        label = self._style("header--label")
        update = state.policy_update
        text = Text(" last PPO update ", style=label)
        if update is None:
            return text.append("none yet", self._style("header--dim"))
        text.append(f"#{update.update}")
        figures = (
            ("policy loss", signed(update.policy_loss)),
            ("value loss", num(update.value_loss)),
            ("entropy", num(update.entropy)),
            ("KL", num(update.approx_kl, 4)),
            ("clip frac", num(update.clip_fraction, 2)),
            ("expl var", num(update.explained_variance, 2)),
            ("grad", num(update.grad_norm, 2)),
            ("mean reward", signed(update.mean_episode_reward)),
        )
        for name, value in figures:
            text.append(f" · {name} ", label)
            text.append(value)
        return text

    def _ppo_short(self, state: ConsoleState) -> Text:
        """The last update in a few characters (compact layout)."""
        update = state.policy_update
        text = Text(" │ PPO", style=self._style("header--label"))
        if update is None:
            return text.append(" -", self._style("header--dim"))
        return text.append(
            f"#{update.update} KL {num(update.approx_kl, 4)} H {num(update.entropy, 2)}"
        )

    def _style(self, component: str) -> Style:
        return self.component_style(component)
