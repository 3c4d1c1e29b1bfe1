"""Every key of the main screen: one ``Binding`` each, with an id and a description.

The description is the footer's short label; the tooltip is the help screen's longer text (and
what a command palette would list); the id names the binding for a keymap (``App.set_keymap``),
so an operator could remap a key without a change here. To add a key: append a ``Binding`` with
a new id here, write ``action_<name>`` on the screen that owns it, and, if it steers the trainer
or only works in a replay, add its action to ``CONTROL_ACTIONS`` or ``REPLAY_ACTIONS``.

Help and quit come first so that a narrow footer never cuts them off (the footer lists a screen's
bindings before the app's).
"""

from __future__ import annotations

from textual.binding import Binding

QUIT_HELP = "Stop the trainer and quit (type stop, Enter)"  # a finished run: at once
# Help rows for q and ctrl+c where no trainer of this console's is stopped by them.
QUIT_HELP_ATTACHED = "Detach and quit; the run goes on"
QUIT_HELP_REPLAY = "Quit"

# Keys whose action opens a prompt: a burst that begins with one is typed into that prompt.
PROMPT_ACTIONS = frozenset(
    {"clip_entry", "clip_all_entry", "goto_env", "log_search", "replay_goto", "env_filter"}
)
# Actions that steer the trainer: greyed out in replay and once the run has finished.
CONTROL_ACTIONS = frozenset(
    {"rollback", "clip_step", "clip_entry", "pause", "resume", "stop_run"}
    | {"clip_all_step", "clip_all_entry", "lr_scale", "governor_sensitivity", "seed_op"}
    | {"checkpoint_now", "note"}
)
REPLAY_ACTIONS = frozenset(
    {
        "replay_toggle",
        "replay_step",
        "replay_speed",
        "replay_home",
        "replay_end",
        "replay_goto",
        "replay_incident",
        "replay_note",
    }
)

# Help-screen wording for actions bound to a pair of keys (one row for both).
HELP_PAIRS = {
    "focus_step": "Previous / next env",
    "focus_row": "Env above / below",
    "replay_step": "Step back / forward one epoch",
    "replay_speed": "Slower / faster replay (0.25x to 64x, then max: an epoch per refresh)",
    "replay_incident": "Previous / next governor panic or rollback",
    "clip_step": "Clip threshold of the focused env ÷1.25 / ×1.25",
    "clip_all_step": "Clip threshold of every env ÷1.25 / ×1.25",
    "replay_note": "Previous / next operator note",
    "log_scroll": "Scroll the event log a page older / newer",
}
_CLIP = Binding.Group("Clip", compact=True)
_STEP = Binding.Group("Step", compact=True)
_SPEED = Binding.Group("Speed", compact=True)
_JUMP = Binding.Group("Jump")
_INCIDENT = Binding.Group("Incident", compact=True)

MAIN_BINDINGS = [
    Binding(
        "question_mark,f1",
        "help",
        description="Help",
        key_display="?",
        tooltip="Show this help",
        id="help",
    ),
    Binding("q", "app.quit", description="Quit", tooltip=QUIT_HELP, id="quit"),
    # Textual's raw mode turns Ctrl-Z into a key: suspend as any curses tool does (the trainer
    # of a live run is suspended with the process; `fg` resumes both).
    Binding(
        "ctrl+z",
        "app.suspend_process",
        description="Suspend",
        show=False,
        tooltip="Suspend to the shell (fg resumes)",
        id="suspend",
    ),
    Binding(
        "1",
        "focus_env(0)",
        description="Env",
        key_display="1-9",
        tooltip="Focus env 1..9",
        id="focus-env-1",
    ),
    *(
        Binding(
            str(n),
            f"focus_env({n - 1})",
            description=f"Env {n}",
            show=False,
            id=f"focus-env-{n}",
        )
        for n in range(2, 10)
    ),
    Binding(
        "g",
        "goto_env",
        description="Go to env",
        show=False,
        tooltip="Focus env N (type it)",
        id="goto-env",
    ),
    Binding("left", "focus_step(-1)", description="Previous env", show=False, id="previous-env"),
    Binding("right", "focus_step(1)", description="Next env", show=False, id="next-env"),
    Binding("up", "focus_row(-1)", description="Env above", show=False, id="env-above"),
    Binding("down", "focus_row(1)", description="Env below", show=False, id="env-below"),
    # Priority: the screen's own tab binding (focus cycling) would otherwise take the key.
    Binding(
        "tab",
        "focus_step(1)",
        description="Next env",
        show=False,
        priority=True,
        id="next-env-tab",
    ),
    Binding(
        "shift+tab",
        "focus_step(-1)",
        description="Previous env",
        show=False,
        priority=True,
        id="previous-env-tab",
    ),
    Binding(
        "space",
        "replay_toggle",
        description="Play",
        tooltip="Play / pause the replay",
        id="replay-play",
    ),
    Binding(
        "comma",
        "replay_step(-1)",
        description="Back",
        key_display=",",
        group=_STEP,
        tooltip="Step back one epoch",
        id="replay-back",
    ),
    Binding(
        "full_stop",
        "replay_step(1)",
        description="Forward",
        key_display=".",
        group=_STEP,
        tooltip="Step forward one epoch",
        id="replay-forward",
    ),
    Binding(
        "less_than_sign",
        "replay_speed(-1)",
        description="Slower",
        key_display="<",
        group=_SPEED,
        tooltip="Halve the replay speed (down to 0.25x)",
        id="replay-slower",
    ),
    Binding(
        "greater_than_sign",
        "replay_speed(1)",
        description="Faster",
        key_display=">",
        group=_SPEED,
        tooltip="Double the replay speed (up to 8x)",
        id="replay-faster",
    ),
    Binding(
        "home",
        "replay_home",
        description="Start",
        group=_JUMP,
        tooltip="Jump to the start",
        id="replay-start",
    ),
    Binding(
        "end",
        "replay_end",
        description="End",
        group=_JUMP,
        tooltip="Jump to the end (following: follow again)",
        id="replay-end",
    ),
    Binding(
        "j",
        "replay_goto",
        description="Epoch",
        tooltip="Go to an epoch (EPISODE:EPOCH, or N across the run)",
        id="replay-goto",
    ),
    Binding(
        "N",
        "replay_incident(-1)",
        description="Prev",
        group=_INCIDENT,
        tooltip="Jump back to the previous governor panic or rollback",
        id="replay-previous-incident",
    ),
    Binding(
        "n",
        "replay_incident(1)",
        description="Next",
        group=_INCIDENT,
        tooltip="Jump to the next governor panic or rollback",
        id="replay-next-incident",
    ),
    Binding(
        "left_parenthesis",
        "replay_note(-1)",
        description="Prev note",
        key_display="(",
        show=False,
        tooltip="Jump back to the previous operator note",
        id="replay-previous-note",
    ),
    Binding(
        "right_parenthesis",
        "replay_note(1)",
        description="Next note",
        key_display=")",
        show=False,
        tooltip="Jump to the next operator note",
        id="replay-next-note",
    ),
    Binding(
        "r",
        "rollback",
        description="Rollback",
        tooltip="Force a rollback of the focused env (type its number and Enter to confirm)",
        id="rollback",
    ),
    Binding(
        "left_square_bracket",
        "clip_step(-1)",
        description="Clip down",
        key_display="[",
        group=_CLIP,
        tooltip="Lower the clip threshold of the focused env (÷1.25)",
        id="clip-down",
    ),
    Binding(
        "right_square_bracket",
        "clip_step(1)",
        description="Clip up",
        key_display="]",
        group=_CLIP,
        tooltip="Raise the clip threshold of the focused env (×1.25)",
        id="clip-up",
    ),
    Binding(
        "c",
        "clip_entry",
        description="Clip=",
        tooltip="Type an exact clip threshold for the focused env",
        id="clip-entry",
    ),
    # issue 25: every env's threshold, the lr factor, the governor, seeds, checkpoint, notes
    Binding(
        "left_curly_bracket",
        "clip_all_step(-1)",
        description="Clip all down",
        key_display="{",
        show=False,
        tooltip="Lower the clip threshold of every env (÷1.25)",
        id="clip-all-down",
    ),
    Binding(
        "right_curly_bracket",
        "clip_all_step(1)",
        description="Clip all up",
        key_display="}",
        show=False,
        tooltip="Raise the clip threshold of every env (×1.25)",
        id="clip-all-up",
    ),
    Binding(
        "C",
        "clip_all_entry",
        description="Clip all=",
        show=False,
        tooltip="Type an exact clip threshold for every env",
        id="clip-all-entry",
    ),
    Binding(
        "L",
        "lr_scale",
        description="LR",
        show=False,
        tooltip="Learning-rate factor of the focused env (all N: every env)",
        id="lr-scale",
    ),
    Binding(
        "V",
        "governor_sensitivity",
        description="Governor",
        show=False,
        tooltip="Governor sensitivity of the focused env, in std devs (all N: every env)",
        id="governor-sensitivity",
    ),
    Binding(
        "o",
        "seed_op",
        description="Seed",
        show=False,
        tooltip="Germinate, prune or fossilize a slot of the focused env (prune and "
        "fossilize: type the slot and Enter to confirm)",
        id="seed-op",
    ),
    Binding(
        "K",
        "checkpoint_now",
        description="Checkpoint",
        show=False,
        tooltip="Write a checkpoint at the next epoch boundary",
        id="checkpoint-now",
    ),
    Binding(
        "m",
        "note",
        description="Note",
        show=False,
        tooltip="Write a note on the focused env (!text: on the run); recorded with the run",
        id="note",
    ),
    # One key, two bindings: the footer shows the one that applies (Resume while paused).
    Binding("p", "pause", description="Pause", tooltip="Pause / resume training", id="pause"),
    Binding("p", "resume", description="Resume", tooltip="Pause / resume training", id="resume"),
    Binding(
        "S",
        "stop_run",
        description="Stop run",
        tooltip="Stop the attached run (type stop and Enter to confirm); q only detaches",
        id="stop-run",
    ),
    Binding(
        "slash",
        "log_search",
        description="Search",
        key_display="/",
        tooltip="Search the event log",
        id="log-search",
    ),
    Binding(
        "f",
        "log_kind",
        description="Filter",
        show=False,
        tooltip="Event log: cycle all / lifecycle / governor / commands",
        id="log-filter",
    ),
    Binding(
        "e",
        "log_env",
        description="Env log",
        show=False,
        tooltip="Event log: only the focused env's events (again: every env's)",
        id="log-env",
    ),
    Binding(
        "l",
        "log_focus",
        description="Log",
        show=False,
        tooltip="Put the keys on the event log (arrows, PgUp/PgDn, home/end; esc leaves)",
        id="log-focus",
    ),
    Binding(
        "pageup",
        "log_scroll(1)",
        description="Older",
        key_display="PgUp",
        show=False,
        tooltip="Event log: page older",
        id="log-older",
    ),
    Binding(
        "pagedown",
        "log_scroll(-1)",
        description="Newer",
        key_display="PgDn",
        show=False,
        tooltip="Event log: page newer",
        id="log-newer",
    ),
    Binding(
        "a",
        "acknowledge",
        description="Ack",
        tooltip="Acknowledge the alerts (clears the count)",
        id="acknowledge",
    ),
    Binding(
        "s",
        "sort",
        description="Sort",
        tooltip="Sort the envs: id, accuracy, panics, grad norm",
        id="sort",
    ),
    Binding(
        "t",
        "layout",
        description="Table",
        tooltip="Layout: auto, table (one line per env), panels",
        id="layout",
    ),
    # htop's filter keys (F4, and \ in htop 3): list only the envs that match.
    Binding(
        "backslash,f4",
        "env_filter",
        description="Find",
        key_display="\\",
        show=False,  # the footer has no room left: ? and ctrl+p list it
        tooltip="Filter the envs (also F4): panic, live, acc<50; words combine; esc clears",
        id="env-filter",
    ),
    Binding(
        "escape",
        "clear_env_filter",
        description="Unfilter",
        show=False,
        tooltip="Clear the env filter: list every env again",
        id="env-filter-clear",
    ),
    Binding(
        "i",
        "show_config",
        description="Config",
        show=False,
        tooltip="The run's recorded config (type to search)",
        id="config",
    ),
    Binding(
        "u",
        "summary",
        description="Summary",
        show=False,
        tooltip="The run's summary: envs ranked by final accuracy, seeds, rollbacks, FLOPs, time",
        id="summary",
    ),
    Binding(
        "v",
        "compare",
        description="Versus",
        show=False,
        tooltip="Compare this run with the reference recording (overwatch run --compare REF)",
        id="compare",
    ),
    # The focused env's plots (terminals from 170x36): issue 25.
    Binding(
        "P",
        "plot_metric",
        description="Plot",
        show=False,
        tooltip="Plot metric: val, train vs val, grad norm, Shapley per seed, PPO losses, FLOPs",
        id="plot-metric",
    ),
    Binding(
        "y",
        "plot_log",
        description="Log y",
        show=False,
        tooltip="Plots: log scale on / off",
        id="plot-log",
    ),
    Binding(
        "z",
        "plot_smooth",
        description="Smooth",
        show=False,
        tooltip="Plots: EMA smoothing off, 0.6, 0.9",
        id="plot-smooth",
    ),
]


# ctrl+c quits from any screen, a dialog's included, so it is the app's (a priority binding).
# Textual binds it to a "press q to quit" hint; here it quits without asking: no text typed into
# the wrong window holds it, and it is the key a stuck terminal gets.
QUIT_NOW = Binding(
    "ctrl+c",
    "quit_now",
    description="Quit",
    show=False,
    priority=True,
    tooltip="Stop the trainer and quit, without asking",
    id="quit-now",
)
APP_BINDINGS = [QUIT_NOW]
# The order of the help screen's rows: ctrl+c beside q.
HELP_ORDER = [*MAIN_BINDINGS[:2], QUIT_NOW, *MAIN_BINDINGS[2:]]


def action_name(binding: Binding) -> str:
    """``focus_env`` for ``focus_env(0)``, ``quit`` for ``app.quit``."""
    return binding.action.split("(")[0].removeprefix("app.")
