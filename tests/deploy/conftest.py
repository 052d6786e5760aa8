def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: takes minutes (a fresh venv install, real processes); still in make test")
