"""The console's widgets, one per module; colours live in ``overwatch.tcss`` (component classes)."""
