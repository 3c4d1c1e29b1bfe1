"""Issue 25's controls on the main screen: the clip threshold of the focused env or of every
env, a learning-rate factor, the governor's sensitivity, the focused env's seeds (germinate,
prune, fossilize), a checkpoint now, and notes; and, in a replay, the jumps between notes.

Every one is a typed command the trainer validates and answers; the console only parses what
was typed into a number or a word and shows the trainer's verdict (its CommandAck). Prune and
fossilize cannot be undone, so they are confirmed the way a rollback is: the slot's id typed,
then Enter (``ConfirmModal``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from esper_engine.contracts import (
    AddNote,
    CheckpointNow,
    FossilizeSeed,
    GerminateSeed,
    OperatorCommand,
    PruneSeed,
    SetGovernorSensitivity,
    SetLrScale,
)
from overwatch.screens.clip_entry import ClipEntryModal
from overwatch.screens.confirm import ConfirmModal
from overwatch.screens.prompt import PromptModal
from overwatch.sources import ReplayAction
from overwatch.widgets.formatting import env_label

if TYPE_CHECKING:
    from overwatch.app import OverwatchApp
    from overwatch.state import ConsoleState

CLIP_FACTOR = 1.25  # ] and [ (and } and {) multiply / divide the threshold by this
SEED_OPS = {"germinate": "germinate", "g": "germinate", "prune": "prune", "p": "prune"}
SEED_OPS |= {"fossilize": "fossilize", "f": "fossilize", "fossilise": "fossilize"}


def parse_scoped_value(text: str) -> tuple[float, bool]:
    """``0.5`` (the focused env) or ``all 0.5`` (every env): (value, every env), or ValueError
    with the one-line reason. Whether the trainer can use the value is the trainer's call."""
    words = text.split()
    every = bool(words) and words[0].lower() in ("all", "*")
    if every:
        words = words[1:]
    if len(words) != 1:
        raise ValueError("enter a number (the focused env) or all and a number, e.g. all 0.5")
    try:
        value = float(words[0])
    except ValueError:
        raise ValueError(f"not a number: {words[0]!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {words[0]!r}")
    return value, every


def parse_seed_op(slot_ids: list[str]):
    """A parser for ``germinate SLOT BLUEPRINT``, ``prune SLOT`` or ``fossilize SLOT`` (first
    letters will do): (op, slot, blueprint or None). The slot must be one of the run's; the
    blueprint and the slot's stage are the trainer's to judge (the policy's own rules)."""

    def parse(text: str) -> tuple[str, str, str | None]:
        words = text.split()
        if not words or words[0].lower() not in SEED_OPS:
            raise ValueError("start with germinate, prune or fossilize (or g, p, f)")
        op = SEED_OPS[words[0].lower()]
        wanted = 3 if op == "germinate" else 2
        if len(words) != wanted:
            example = "germinate SLOT BLUEPRINT" if op == "germinate" else f"{op} SLOT"
            raise ValueError(f"{op} takes {wanted - 1} word(s): {example}")
        slot = words[1]
        if slot_ids and slot not in slot_ids:
            raise ValueError(f"unknown slot {slot!r}; slots are {', '.join(slot_ids)}")
        return op, slot, words[2] if op == "germinate" else None

    return parse


def parse_note(text: str) -> str:
    stripped = text.strip()
    if not stripped:
        raise ValueError("type the note, or esc to write none")
    return stripped


class OperatorActions:
    """Mixed into ``MainScreen``: its ``action_*`` methods for issue 25's keys."""

    focused_env: int
    overwatch: OverwatchApp
    state: ConsoleState
    app: OverwatchApp

    def _focused(self) -> int | None:
        if not self.state.envs:
            self.app.notify("no env yet: wait for the run's first events", severity="warning")
            return None
        return self.focused_env

    # --- the clip threshold ----------------------------------------------------------------------

    def action_clip_step(self, direction: int) -> None:
        """[ / ]: the focused env's threshold."""
        env = self._focused()
        if env is not None:
            self._clip_step(direction, env)

    def action_clip_all_step(self, direction: int) -> None:
        """{ / }: every env's threshold."""
        self._clip_step(direction, None)

    def _clip_step(self, direction: int, env: int | None) -> None:
        current = self.overwatch.current_clip(env)
        if current is None:
            self.app.notify(
                "gradient clipping is off; press c (or C) to set a threshold", severity="warning"
            )
            return
        value = current * CLIP_FACTOR if direction > 0 else current / CLIP_FACTOR
        self.overwatch.send_clip(value, env)

    def action_clip_entry(self, typed: str = "", submit: bool = False) -> None:
        """c: type the focused env's threshold."""
        env = self._focused()
        if env is not None:
            self._clip_entry(env, typed, submit)

    def action_clip_all_entry(self, typed: str = "", submit: bool = False) -> None:
        """C: type every env's threshold."""
        self._clip_entry(None, typed, submit)

    def _clip_entry(self, env: int | None, typed: str, submit: bool) -> None:
        def entered(value: float | None) -> None:
            if value is not None:
                self.overwatch.send_clip(value, env)

        current = self.overwatch.current_clip(env)
        target = "every env" if env is None else env_label(env)
        self.app.push_screen(ClipEntryModal(current, typed, submit, target=target), entered)

    # --- lr scale, governor sensitivity, checkpoint ----------------------------------------------

    def action_lr_scale(self) -> None:
        self._scoped_prompt(
            "Learning-rate factor",
            "multiplies the host's and seeds' lr on top of the schedule (1 = as scheduled)",
            lambda value, env: SetLrScale(value=value, env=env),
        )

    def action_governor_sensitivity(self) -> None:
        self._scoped_prompt(
            "Governor sensitivity",
            "divergence when the loss > mean + N x std of its history (the config's default: 6)",
            lambda value, env: SetGovernorSensitivity(value=value, env=env),
        )

    def _scoped_prompt(self, title: str, detail: str, build) -> None:
        env = self._focused()
        if env is None:
            return

        def entered(answer: tuple[float, bool] | None) -> None:
            if answer is not None:
                value, every = answer
                target = None if every else env
                self.overwatch.send(build(value, target), env=target)

        self.app.push_screen(
            PromptModal(
                f"{title} for {env_label(env)} (all N: every env)",
                parse_scoped_value,
                detail=detail,
                placeholder="e.g. 0.5 or all 0.5",
            ),
            entered,
        )

    def action_checkpoint_now(self) -> None:
        self.overwatch.send(CheckpointNow())

    # --- seeds of the focused env ----------------------------------------------------------------

    def action_seed_op(self) -> None:
        env = self._focused()
        if env is None:
            return
        view = self.state.envs[env]
        stages = ", ".join(f"{sid} {slot.state.stage}" for sid, slot in view.slots.items())

        def entered(answer: tuple[str, str, str | None] | None) -> None:
            if answer is not None:
                self._seed_command(env, *answer)

        self.app.push_screen(
            PromptModal(
                f"Seed of {env_label(env)}: germinate SLOT BLUEPRINT, prune SLOT, fossilize SLOT",
                parse_seed_op(self.state.slot_ids),
                detail=stages or "no slot reported yet",
                placeholder=f"e.g. germinate {(self.state.slot_ids or ['SLOT'])[0]} conv_light",
            ),
            entered,
        )

    def _seed_command(self, env: int, op: str, slot: str, blueprint: str | None) -> None:
        if op == "germinate":
            self.overwatch.send(GerminateSeed(env=env, slot_id=slot, blueprint=blueprint), env=env)
            return
        command: OperatorCommand = (
            PruneSeed(env=env, slot_id=slot)
            if op == "prune"
            else FossilizeSeed(env=env, slot_id=slot)
        )

        def answered(confirmed: bool | None) -> None:
            if confirmed:
                self.overwatch.send(command, env=env)
            else:
                self.app.notify(f"no {op} of {slot}: not confirmed, nothing sent")

        detail = (
            "Removes the seed and its weights; the slot is embargoed before it can grow again."
            if op == "prune"
            else "Makes the seed a permanent part of the host for the rest of the episode."
        )
        self.app.push_screen(
            ConfirmModal(
                f"{op.capitalize()} {slot} of {env_label(env)}?",
                detail + " The policy's own gates decide whether it is allowed.",
                answer=slot,
                clock=self.overwatch.key_clock,
            ),
            answered,
        )

    # --- notes -----------------------------------------------------------------------------------

    def action_note(self) -> None:
        env = self.focused_env if self.state.envs else None

        def entered(answer: tuple[str, bool] | None) -> None:
            if answer is not None:
                text, whole_run = answer
                target = None if whole_run or env is None else env
                self.overwatch.send(AddNote(text=text, env=target), env=target)

        def parse(text: str) -> tuple[str, bool]:
            stripped = text.strip()
            whole_run = stripped.startswith("!")  # "!text": about the run, not the env
            return parse_note(stripped.removeprefix("!")), whole_run

        about = "the run" if env is None else env_label(env)
        self.app.push_screen(
            PromptModal(
                f"Note on {about} (start with ! for the whole run)",
                parse,
                detail="recorded in the run with the time; shown in the log and on the plots",
                placeholder="e.g. lr looks too high after the germinate",
            ),
            entered,
        )

    async def action_replay_note(self, direction: int) -> None:
        forward = direction > 0
        await self._replay(ReplayAction.NEXT_NOTE if forward else ReplayAction.PREVIOUS_NOTE)
