def pytest_configure(config):
    config.addinivalue_line("markers", "slow: starts extra processes or clusters (still run in CI)")
