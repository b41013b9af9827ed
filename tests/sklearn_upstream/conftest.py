"""The vendored scikit-learn test files run only through tests/test_sklearn_upstream.py."""

collect_ignore_glob = ["test_*.py"]
