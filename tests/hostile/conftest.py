"""Test certificates for the TLS cases (made once per run)."""
import pytest

from tlsutil import Certs


@pytest.fixture(scope="session")
def certs():
    c = Certs()
    yield c
    c.remove()
