"""DOX's shipped workflow definitions, teams file and templates (YAML only, no code).

This file makes the folder the package ``dox_tasks.workflow_defs`` (pyproject's package-dir
maps it there), so an installed wheel carries the YAML and
``importlib.resources.files("dox_tasks.workflow_defs")`` finds it, editable install or not.
``DOX_DEFS_DIR`` points DOX at another folder instead.
"""
