"""Coverage-guided fuzz targets (atheris): one class per target, each with ``one_input(data: bytes)`` that
raises only on a defect. ``tests.fuzz.targets`` names them; ``tools/fuzz.py`` runs them under libFuzzer."""
