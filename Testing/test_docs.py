"""The documentation says what the software has: every CLI flag and Python name README.md shows exists, the
files it links exist, it stays short and user-first, and no document narrates how the project was developed.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 300
SETUP_HEADING_WITHIN = 60
LINKED_DOCS = ("CHANGELOG.md", "docs/method.md", "CONTRIBUTING.md", "benchmarks/README.md", "training/README.md",
               "training/NOTES.md")

# Flags of other programs a README line may show next to ours: the command whose flags follow is the last of
# these tokens before the flag on the same (joined) line; with none, it is skullvae-complete.
SLICER_FLAGS = {"--no-splash", "--no-main-window", "--testing", "--python-code", "--python-script",
                "--additional-module-paths"}
TRAINING_MODULES = ("training.pipeline", "training.train", "training.aggregate", "training.evaluate",
                    "training.generate")
COMMAND_TOKENS = ("skullvae-complete", "scripts/demo.sh", "Slicer", "torchrun", "pip", "pytest", "ruff",
                  *TRAINING_MODULES, "benchmark_completion.py", "benchmark_design.py")

# Words that narrate development (how, when or where the work was done), not what the software does.
FORBIDDEN = [
    r"\bsessions?\b(?! ?node)",
    r"\bissues? ?#?\d",
    r"\blent\b",
    r"\bborrowed\b",
    r"\b(this|that|next|earlier|previous) round\b",
    r"\bround \d",
    r"\bworkplace\b",
    r"\bwe tried\b",
]


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def _code_blocks(text: str, languages: tuple[str, ...]) -> list[str]:
    return [body for lang, body in re.findall(r"```(\w*)\n(.*?)```", text, re.S) if lang in languages]


def _joined_lines(text: str) -> list[str]:
    """Lines with shell continuations (trailing backslash) joined, code fences removed."""
    return re.sub(r"\\\n\s*", " ", text).splitlines()


def readme_cli_flags(text: str) -> dict[str, set[str]]:
    """Every ``--flag`` of the README, by the command it belongs to."""
    flags: dict[str, set[str]] = {}
    for line in _joined_lines(text):
        command = "skullvae-complete"
        for token in re.findall(r"[\w./-]+|--[\w-]+", line):
            if token.startswith("--"):
                flag = re.match(r"--[a-z][\w-]*", token)
                if flag:
                    flags.setdefault(command, set()).add(flag.group(0).rstrip("-"))
                continue
            for name in COMMAND_TOKENS:
                if token == name or token.endswith("/" + name) or token == f"-m{name}":
                    command = name
    return flags


def cli_parser_flags() -> set[str]:
    from SkullVAECompletionLib.cli import build_parser

    return {option for action in build_parser()._actions for option in action.option_strings}


def test_readme_cli_flags_exist_in_the_parser():
    known = cli_parser_flags()
    flags = readme_cli_flags(_readme())
    assert flags.get("skullvae-complete"), "README.md shows no skullvae-complete flags"
    unknown = sorted(flags["skullvae-complete"] - known)
    assert not unknown, f"README.md shows skullvae-complete flags the parser does not have: {unknown}"


def test_readme_flags_of_other_commands_exist():
    flags = readme_cli_flags(_readme())
    problems = sorted(flags.get("Slicer", set()) - SLICER_FLAGS)
    for module in TRAINING_MODULES:
        source = (ROOT / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8")
        problems += [f"{module} {flag}" for flag in sorted(flags.get(module, set()))
                     if f'"{flag}"' not in source]
    for command in ("torchrun", "pip", "pytest", "ruff", "scripts/demo.sh", "benchmark_completion.py",
                    "benchmark_design.py"):
        problems += [f"{command} {flag}" for flag in sorted(flags.get(command, set()))]  # none expected
    assert not problems, f"README.md shows flags that do not exist: {problems}"


def test_a_made_up_flag_is_caught():
    text = _readme() + "\n```bash\nskullvae-complete in.nrrd -o out --gamma 1 --made-up-flag\n```\n"
    assert "--made-up-flag" in readme_cli_flags(text)["skullvae-complete"] - cli_parser_flags()
    # Slicer's own flags on the same line belong to Slicer, not to the CLI
    slicer_line = 'Slicer --no-main-window --python-script x.py -- masks/ out/ --stl'
    assert "--no-main-window" in readme_cli_flags(slicer_line)["Slicer"]


# --- Python names ---------------------------------------------------------------------------------------------


def _types() -> dict[str, object]:
    """What the README's example variables are (their names are the README's convention)."""
    import SkullVAECompletion
    from SkullVAECompletionLib import mrml
    from SkullVAECompletionLib.inference.completion import SkullCompleter
    from SkullVAECompletionLib.inference.results import CompletionResult, EncodedSkull

    return {
        "SkullVAECompletion": SkullVAECompletion,
        "logic": SkullVAECompletion.SkullVAECompletionLogic,
        "logic.lastResult": mrml.CompletionSummary,
        "completer": SkullCompleter,
        "encoded": EncodedSkull,
        "result": CompletionResult,
        "other": CompletionResult,
    }


def _has_member(owner: object, name: str) -> bool:
    if hasattr(owner, name):
        return True
    if inspect.isclass(owner):
        for klass in owner.__mro__:
            if name in getattr(klass, "__annotations__", {}):
                return True
            if dataclasses.is_dataclass(klass) and name in {f.name for f in dataclasses.fields(klass)}:
                return True
            try:
                source = inspect.getsource(klass)
            except (OSError, TypeError):
                continue
            if re.search(rf"self\.{re.escape(name)}\s*(:[^=]*)?=", source):
                return True
    return False


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def readme_python_problems(text: str) -> list[str]:
    """Names of the README's Python blocks that do not exist: imports, attributes, methods, keyword arguments."""
    types = _types()
    problems: list[str] = []
    blocks = _code_blocks(text, ("python",))
    assert blocks, "README.md has no Python examples"
    for block in blocks:
        tree = ast.parse(block)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                module = importlib.import_module(node.module)
                problems += [f"{node.module}.{a.name}" for a in node.names if not hasattr(module, a.name)]
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    importlib.import_module(alias.name)
            elif isinstance(node, ast.Attribute):
                dotted = _dotted(node)
                if dotted is None:
                    continue
                base, _, name = dotted.rpartition(".")
                if base in types and not _has_member(types[base], name):
                    problems.append(dotted)
            if isinstance(node, ast.Call) and node.keywords:
                target = _call_target(node.func, types)
                if target is None:
                    continue
                try:
                    parameters = inspect.signature(target).parameters
                except (TypeError, ValueError):
                    continue
                if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
                    continue
                problems += [f"{_dotted(node.func)}({k.arg}=)" for k in node.keywords
                             if k.arg is not None and k.arg not in parameters]
    # Names in the prose: `logic.something`, `SkullCompleter(...)`
    for dotted in re.findall(r"`(logic\.\w+)", text):
        base, _, name = dotted.partition(".")
        if not _has_member(types[base], name):
            problems.append(dotted)
    return problems


def _call_target(func: ast.AST, types: dict[str, object]) -> object | None:
    dotted = _dotted(func)
    if dotted is None:
        return None
    if dotted in types and inspect.isclass(types[dotted]):
        return types[dotted]
    base, _, name = dotted.rpartition(".")
    if base in types:
        return getattr(types[base], name, None)
    if "." not in dotted:
        import SkullVAECompletionLib as package
        from SkullVAECompletionLib.imageio import volumes
        from SkullVAECompletionLib.inference import completion

        for module in (package, completion, volumes):
            if hasattr(module, dotted):
                return getattr(module, dotted)
    return None


def test_readme_python_names_exist():
    problems = readme_python_problems(_readme())
    assert not problems, f"README.md shows Python names that do not exist: {problems}"


def test_a_made_up_python_name_is_caught():
    text = _readme() + "\n```python\nlogic.processEverything(seg)\nresult.no_such_field\n" \
                       "completer.complete(encoded, no_such_option=1)\n```\n"
    problems = readme_python_problems(text)
    assert "logic.processEverything" in problems and "result.no_such_field" in problems
    assert "completer.complete(no_such_option=)" in problems


# --- files, length, order -------------------------------------------------------------------------------------


def test_linked_files_exist_and_the_docs_are_linked():
    text = _readme()
    targets = {t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text)
               if not re.match(r"(https?:|mailto:|#)", t)}
    missing = sorted(t for t in targets if not (ROOT / t).exists())
    assert not missing, f"README.md links to files that do not exist: {missing}"
    unlinked = [doc for doc in LINKED_DOCS if doc not in targets]
    assert not unlinked, f"README.md does not link {unlinked}"


def test_every_doc_links_to_existing_files():
    for doc in (ROOT / d for d in LINKED_DOCS):
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8")):
            if re.match(r"(https?:|mailto:|#)", target):
                continue
            assert (doc.parent / target.split("#")[0]).exists(), f"{doc.relative_to(ROOT)} links to {target}"


def test_readme_is_short_and_setup_comes_early():
    lines = _readme().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines (at most {MAX_README_LINES})"
    setup = [i for i, line in enumerate(lines, 1) if re.match(r"#+ .*(Setup|Installation)", line)]
    assert setup and setup[0] <= SETUP_HEADING_WITHIN, f"no Setup heading within line {SETUP_HEADING_WITHIN}"


def test_readme_keeps_the_demo_and_test_commands():
    text = _readme()
    for command in ("bash scripts/demo.sh", "bash scripts/test.sh"):
        assert command in text and (ROOT / command.split()[1]).exists(), command


# --- no development narrative ---------------------------------------------------------------------------------


def _documents() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=False).stdout.split()
    paths = [ROOT / p for p in listed if p.endswith((".md", ".yaml", ".yml", ".s4ext"))] if listed else []
    if not paths:  # not a git checkout: the known documents
        paths = [ROOT / p for p in (*LINKED_DOCS, "README.md")] + sorted((ROOT / "training" / "configs").glob("*.yaml"))
    return [p for p in paths if p.exists() and "/.venv/" not in str(p)]


@pytest.mark.parametrize("pattern", FORBIDDEN)
def test_no_document_narrates_development(pattern):
    hits = []
    for path in _documents():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(pattern, line, re.I):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not hits, "development narrative in the docs:\n" + "\n".join(hits)
