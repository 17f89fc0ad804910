"""Data validation: expectation suites, image and path checks, leakage, quarantine and the gate."""
