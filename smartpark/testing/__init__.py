"""Test support shipped to plugin authors: ``fakes`` (a working fake for every port), ``contracts`` (one
abstract test class per port, which fakes and real adapters both pass) and ``samples`` (valid sample data)."""
