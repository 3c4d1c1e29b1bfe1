"""The console's screens: ``main`` (the run, and every key of it, listed in ``bindings``) and the
modal dialogs pushed over it (confirm, prompt, clip entry, help, crash).

A new dialog is a ``ModalScreen`` in a module of its own here, pushed by the action that needs it
with a callback for its answer (``self.app.push_screen(Dialog(...), answered)``); its text is
shown as ``rich.text.Text``, never as markup.
"""
