"""Meta-tests: the dependency rule, and that every hook and adapter is documented, declared and tested."""

import ast
import inspect
import subprocess
import sys
import tomllib
import unittest
from pathlib import Path

import smartpark.ports.hookspecs as hookspecs

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
ADAPTERS = ROOT / "smartpark" / "adapters"


def adapter_dirs():
    return sorted(p for p in ADAPTERS.iterdir() if p.is_dir() and (p / "__init__.py").exists())


class DependencyRuleTests(unittest.TestCase):
    def test_import_linter_contracts_hold(self):
        exe = Path(sys.executable).with_name("lint-imports")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "importlinter.cli"]
        result = subprocess.run(cmd + ["--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True,
                                text=True, timeout=300)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("0 broken", result.stdout)

    def test_core_imports_only_stdlib_attrs_and_itself(self):
        allowed = set(sys.stdlib_module_names) | {"attrs", "smartpark"}
        for path in (ROOT / "smartpark" / "core").glob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module or ""]
                for name in names:
                    with self.subTest(file=path.name, module=name):
                        self.assertIn(name.split(".")[0], allowed)


class HookTests(unittest.TestCase):
    def hooks(self):
        return [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("register_")]

    def test_every_hook_has_a_typed_documented_signature(self):
        self.assertEqual(sorted(self.hooks()), sorted(hookspecs.KINDS))
        for name in self.hooks():
            fn = getattr(hookspecs, name)
            with self.subTest(hook=name):
                self.assertTrue((fn.__doc__ or "").strip(), "hook has no docstring")
                self.assertEqual(list(inspect.signature(fn).parameters), ["register"])
                self.assertIn("register", fn.__annotations__)

    def test_every_hook_is_in_the_plugin_guide(self):
        guide = (ROOT / "docs" / "writing-a-plugin.md").read_text(encoding="utf-8")
        for name in self.hooks():
            with self.subTest(hook=name):
                self.assertIn(f"`{name}`", guide)

    def test_every_hook_is_exercised_by_a_test(self):
        tests = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "tests").rglob("*.py"))
        adapters = "\n".join(p.read_text(encoding="utf-8") for p in ADAPTERS.rglob("__init__.py"))
        for name in self.hooks():
            with self.subTest(hook=name):
                self.assertTrue(f"def {name}(" in tests or f"def {name}(" in adapters,
                                f"no plugin in tests or adapters implements {name}")


class AdapterTests(unittest.TestCase):
    def test_every_adapter_is_declared_documented_and_configurable(self):
        declared = PYPROJECT["project"]["entry-points"]["smartpark"]
        dirs = adapter_dirs()
        self.assertTrue(dirs, "no adapters found")
        for path in dirs:
            with self.subTest(adapter=path.name):
                self.assertEqual(declared.get(path.name), f"smartpark.adapters.{path.name}",
                                 "declare it under [project.entry-points.\"smartpark\"]")
                readme = path / "README.md"
                self.assertTrue(readme.exists(), "adapter has no README.md")
                self.assertGreater(len(readme.read_text(encoding="utf-8")), 200)
                source = (path / "__init__.py").read_text(encoding="utf-8")
                self.assertIn("@hookimpl", source)
                self.assertIn('extra="forbid"', source.replace("'", '"'))

    def test_every_entry_point_is_discoverable(self):
        from smartpark.plugins import Plugins

        plugins = Plugins()
        self.assertEqual(plugins.broken, {})
        declared = PYPROJECT["project"]["entry-points"]["smartpark"]
        providers = {spec.provider for spec in plugins.available().values()}
        for name in declared:
            with self.subTest(entry_point=name):
                self.assertIn(name, providers, "installed metadata is stale: pip install -e . again")

    def test_plugins_toml_template_matches_the_example(self):
        self.assertEqual((ROOT / "plugins.toml").read_text(encoding="utf-8"),
                         (ROOT / "smartpark" / "resources" / "plugins.toml").read_text(encoding="utf-8"))

    def test_example_plugins_toml_loads(self):
        from smartpark.config import load_config

        cfg = load_config(ROOT / "plugins.toml")
        self.assertIn("storage_sqlite", cfg.plugins.enabled)


class LintTests(unittest.TestCase):
    def test_ruff_is_clean(self):
        exe = Path(sys.executable).with_name("ruff")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ruff"]
        result = subprocess.run(cmd + ["check", "smartpark", "tests", "bench"], cwd=ROOT, capture_output=True,
                                text=True, timeout=300)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
