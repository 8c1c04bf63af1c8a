"""Conformance checks: pytest modules whose tests carry @pytest.mark.req ids (see ..plugin)."""
