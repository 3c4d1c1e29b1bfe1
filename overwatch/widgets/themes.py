"""The console's own themes (``--theme``, and the command palette's theme picker): a
high-contrast one and a light one, next to Textual's built-in themes."""

from __future__ import annotations

from textual.theme import BUILTIN_THEMES, Theme

HIGH_CONTRAST = Theme(
    name="high-contrast",
    primary="#00ffff",
    secondary="#ffff00",
    accent="#ffffff",
    warning="#ffff00",
    error="#ff5555",
    success="#00ff00",
    foreground="#ffffff",
    background="#000000",
    surface="#000000",
    panel="#1a1a1a",
    dark=True,
    variables={
        "text-muted": "#d0d0d0",
        "footer-key-foreground": "#ffff00",
        "footer-description-foreground": "#ffffff",
        "footer-background": "#000000",
        "footer-item-background": "#000000",
        "border": "#ffffff",
    },
)

LIGHT = Theme(
    name="light",
    primary="#0050a0",
    secondary="#7a2f9a",
    accent="#b34700",
    warning="#8a5a00",
    error="#b00020",
    success="#1b6e20",
    foreground="#1a1a1a",
    background="#fafafa",
    surface="#ffffff",
    panel="#e6e6e6",
    dark=False,
    variables={
        "text-muted": "#4d4d4d",
        "footer-key-foreground": "#0050a0",
    },
)

THEMES = (HIGH_CONTRAST, LIGHT)
# What --theme accepts: "dark" is Textual's default, then ours, then Textual's own.
ALIASES = {"dark": "textual-dark"}
THEME_NAMES = ("dark", *(theme.name for theme in THEMES), *BUILTIN_THEMES)
