"""Fixtures of the fault tests.

``tests/fixtures/faults.py`` is meant to be registered in ``tests/conftest.py``
(``pytest_plugins``); until it is, its fixtures are made visible to this folder here.
"""

from tests.fixtures.faults import fault_env, private_stack

__all__ = ["fault_env", "private_stack"]
