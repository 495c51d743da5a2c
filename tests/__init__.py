"""The test suite. It mirrors the package: tests/<room>/ tests musecl_store/<room>/ (and
tests/training/ the trainer). A package, so that test modules are named by their folder
(``tests.search.test_search``): two folders may hold modules of the same name, and
tests/training cannot hide the real ``training`` package. Shared fixtures are in conftest.py;
tests/bundles/ holds data, not tests."""
