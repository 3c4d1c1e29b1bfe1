"""Widgets drawn as lines of rich Text that repaint only the lines that changed.

Textual repaints a whole widget on ``refresh()``: every line goes through Content and Strip
conversion again, which was most of the console's CPU during a run. An env panel usually
changes one line per update (the batch-level grad norm) and the header none at all, so these
widgets compare the lines they would show with the lines on screen and mark only the changed
rows dirty; each row keeps its strip for as long as its line stays the same.
"""

from __future__ import annotations

from typing import Self

from rich.cells import cell_len
from rich.style import Style
from rich.text import Text
from textual.content import Content
from textual.geometry import Region, Size
from textual.strip import Strip
from textual.visual import Visual
from textual.widget import Widget

LineKey = tuple[object, ...]


def line_key(line: Text) -> LineKey:
    """All a line's strip depends on: its characters, its base style and its styled spans."""
    return (line.plain, line.style, *line.spans)


def changed_cells(old: LineKey | None, new: LineKey | None, width: int) -> int:
    """How many cells from the left of a row must be repainted to turn line ``old`` into line
    ``new``: up to the last cell whose character or style differs (Textual writes a dirty row
    from its widget's left edge to the dirty region's right end, so the unchanged rest of the
    row is not written). ``width`` when unsure: wide characters, another base style, no line."""
    if old is None or new is None or old[1] != new[1]:
        return width
    a, b = old[0], new[0]
    if (
        not (isinstance(a, str) and isinstance(b, str))
        or cell_len(a) != len(a)
        or cell_len(b) != len(b)
    ):
        return width
    n = max(len(a), len(b))
    a, b = a.ljust(n), b.ljust(n)
    last = next((i for i in range(n - 1, -1, -1) if a[i] != b[i]), -1)
    for span in set(old[2:]) ^ set(new[2:]):
        last = max(last, span.end - 1)
    return max(1, min(last + 1, width))


class LineWidget(Widget):
    """Subclasses say what to show in ``build_lines``; ``redraw()`` puts the changes on screen."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._texts: list[Text] = []
        self._keys: list[LineKey] = []
        self._built_for: Size | None = None  # the content size the lines were built for
        self._strips: dict[int, tuple[LineKey, Strip]] = {}
        self._strip_basis: tuple[int, object] | None = None  # (width, visual style) of _strips
        self._styles: dict[str, Style] = {}
        self._border_only: str | None = None  # "top" or "bottom": repaint that row only
        self.strips_made = 0  # lines turned into strips so far: what a repaint costs

    def build_lines(self, width: int, height: int) -> list[Text]:
        """The lines to show at this content size, top first (each cropped to ``width``)."""
        raise NotImplementedError

    @property
    def lines(self) -> list[str]:
        """The lines as last built, as plain text."""
        return [line.plain for line in self._texts]

    def component_style(self, component: str) -> Style:
        """A component class's style, looked up once per full repaint (lines use many)."""
        style = self._styles.get(component)
        if style is None:
            style = self._styles[component] = self.get_component_rich_style(component, partial=True)
        return style

    def redraw(self) -> None:
        """Rebuild the lines now and repaint the rows whose line differs from the one shown."""
        size = self.size
        if size != self._built_for:  # not laid out yet, resized or restyled: build when painted
            self.refresh()
            return
        lines = self.build_lines(size.width, size.height)
        keys = [line_key(line) for line in lines]
        old = self._keys
        rows = [
            y
            for y in range(max(len(keys), len(old)))
            if y >= len(keys) or y >= len(old) or keys[y] != old[y]
        ]
        self._texts, self._keys = lines, keys
        if rows:
            self.refresh(
                *(
                    Region(
                        0,
                        y,
                        changed_cells(
                            old[y] if y < len(old) else None,
                            keys[y] if y < len(keys) else None,
                            size.width,
                        ),
                        1,
                    )
                    for y in rows
                )
            )

    def set_border_titles(self, title: str, subtitle: str) -> None:
        """Set the border's title and subtitle, repainting only the border row that changed
        (Textual's setters repaint the whole widget; the subtitle here changes every epoch)."""
        for row, attribute, text in (
            ("top", "border_title", title),
            ("bottom", "border_subtitle", subtitle),
        ):
            if getattr(self, attribute) == text:
                continue
            self._border_only = row
            try:
                setattr(self, attribute, text)
            finally:
                self._border_only = None

    def refresh(
        self,
        *regions: Region,
        repaint: bool = True,
        layout: bool = False,
        recompose: bool = False,
    ) -> Self:
        """A full repaint (a class or theme change) also rebuilds every line when painted, as
        the lines carry resolved component styles."""
        if repaint and not regions:
            if self._border_only and self.outer_size.height > 1:
                regions = (self._border_row(self._border_only),)
            else:
                self._built_for = None
                self._styles.clear()
        return super().refresh(*regions, repaint=repaint, layout=layout, recompose=recompose)

    def _border_row(self, row: str) -> Region:
        """The widget's top or bottom row, in content coordinates (what refresh takes)."""
        x, y = self.content_offset
        width, height = self.outer_size
        return Region(-x, -y if row == "top" else height - 1 - y, width, 1)

    def render_line(self, y: int) -> Strip:
        size = self.size
        if size != self._built_for:
            self._texts = self.build_lines(size.width, size.height)
            self._keys = [line_key(line) for line in self._texts]
            self._built_for = size
            basis = (size.width, self.visual_style)
            if basis != self._strip_basis:
                self._strips.clear()
                self._strip_basis = basis
        key = self._keys[y] if y < len(self._keys) else None
        cached = self._strips.get(y)
        if cached is not None and cached[0] == key:
            return cached[1]
        strip = self._to_strip(y, size.width)
        self._strips[y] = (key, strip)
        return strip

    def _to_strip(self, y: int, width: int) -> Strip:
        """One line as Textual draws it in a multi-line render (no wrapping, cropped)."""
        style = self.visual_style
        if y >= len(self._texts):
            return Strip.blank(width, style.rich_style)
        self.strips_made += 1
        content = Content.from_rich_text(self._texts[y], console=self.app.console)
        strips = Visual.to_strips(self, content, width, 1, style)
        return strips[0] if strips else Strip.blank(width, style.rich_style)
