"""Training, evaluation and export (needs the ``[train]`` extra: torch). Never imported by the runtime."""
