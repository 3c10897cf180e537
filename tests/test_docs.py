"""The README and the pages of docs/ say what dfer does: every command they show parses as they write it (the
command, its options, the config keys and values of ``--set`` and ``--grid``), every other command names a script,
module or extra that exists, every config key they name exists, every link resolves, and the README's tour runs
end to end on the example clips."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import shlex
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from pipeline.cli import build_parser, main
from pipeline.engine.config import PipelineConfig, load_config, parse_override
from pipeline.tools.sweep import parse_grid, plan_sweep

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "ARCHITECTURE.md", ROOT / "examples" / "README.md",
         ROOT / "prompts" / "presets" / "README.md"]
SECTIONS = tuple(PipelineConfig.model_fields)
# programs of other projects: the docs show how to call them, their options are theirs
EXTERNAL = {"vllm", "ray", "docker", "export", "for", "do", "done", "apt-get", "huggingface-cli", "tensorboard", "llamafactory-cli", "."}
SHELL_OPS = {"&&", "||", ";", "|", "&"}


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    body: str


def _split_fences(text: str) -> tuple[list[tuple[int, str, str]], str]:
    """The fenced code blocks of a Markdown text (line, language, body), and the text without them."""
    blocks, prose, lines = [], [], text.split("\n")
    i = 0
    while i < len(lines):
        m = re.match(r"^\s*```(\w*)\s*$", lines[i])
        if not m:
            prose.append(lines[i])
            i += 1
            continue
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            body.append(lines[i])
            i += 1
        assert i < len(lines), f"unclosed code block at line {start}"
        blocks.append((start, m.group(1), "\n".join(body)))
        prose.append("")
        i += 1
    return blocks, "\n".join(prose)


def _blocks(page: Path) -> list[Block]:
    return [Block(page, n, lang, body) for n, lang, body in _split_fences(page.read_text(encoding="utf-8"))[0]]


def _prose(page: Path) -> str:
    return _split_fences(page.read_text(encoding="utf-8"))[1]


def _spans(page: Path) -> list[str]:
    """Inline code spans of the prose (single backticks)."""
    return re.findall(r"(?<!`)`([^`\n]+)`(?!`)", _prose(page))


def _shell_commands(body: str) -> list[list[str]]:
    """The simple commands of a shell block: continuation lines joined, comments and ``$ `` prompts dropped, shell
    variables replaced by ``1`` (a loop counter, a task id), split at ``&&``, ``;``, ``|`` and ``&``, leading
    ``NAME=value`` assignments removed."""
    text = re.sub(r"\\\n", " ", body)
    out = []
    for line in text.split("\n"):
        line = re.sub(r"^\s*\$ ", "", line)
        line = re.sub(r"\$\{?[A-Za-z_]\w*\}?", "1", line)
        lex = shlex.shlex(line, posix=True, punctuation_chars="&;|")
        lex.whitespace_split = True
        lex.commenters = "#"
        cmd: list[str] = []
        for tok in [*lex, ";"]:
            if tok in SHELL_OPS:
                while cmd and re.match(r"^[A-Za-z_]\w*=", cmd[0]):
                    cmd.pop(0)
                if cmd:
                    out.append(cmd)
                cmd = []
            else:
                cmd.append(tok)
    return out


def _subparsers(parser):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            return action.choices
    return None


def _command_parser(argv: list[str]):
    """The (sub)parser of ``dfer argv`` and how many words name the command, or an error."""
    parser, used = build_parser(), 0
    while (choices := _subparsers(parser)) is not None:
        if used >= len(argv) or argv[used] not in choices:
            return None, used, f"no such command: dfer {' '.join(argv[:used + 1])}"
        parser, used = choices[argv[used]], used + 1
    return parser, used, None


def _yaml_files(tmp: Path) -> dict[str, Path]:
    """The YAML blocks of the docs whose first line names a file (``# my.yaml``), written to ``tmp``."""
    files = {}
    for page in PAGES:
        for b in _blocks(page):
            m = re.match(r"#\s*(\S+\.ya?ml)\s*\n", b.body)
            if b.lang == "yaml" and m:
                files[m.group(1)] = tmp / m.group(1)
                files[m.group(1)].write_text(b.body, encoding="utf-8")
    return files


def _check_dfer(argv: list[str], yaml_files: dict[str, Path]) -> list[str]:
    """Problems of one ``dfer`` command as the docs write it: it must parse, an option given twice must be one
    that repeats, and its config (``--preset/--config/--set``, each ``--grid`` combination) must load."""
    parser, used, err = _command_parser(argv)
    if err:
        return [err]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = build_parser().parse_args(argv)
    except SystemExit:
        return [stderr.getvalue().strip().splitlines()[-1]]
    problems = []
    seen: dict[str, int] = {}
    for tok in argv[used:]:
        action = parser._option_string_actions.get(tok.split("=", 1)[0])
        if action is not None:
            seen[action.dest] = seen.get(action.dest, 0) + 1
            if seen[action.dest] == 2 and action.__class__.__name__ not in ("_AppendAction", "_CountAction"):
                problems.append(f"{tok} is given twice but only its last value counts")
    if hasattr(args, "overrides"):
        config_file = getattr(args, "config", None)
        if config_file and not (ROOT / config_file).is_file():
            if config_file not in yaml_files:
                return [*problems, f"--config {config_file}: neither a file of the repository nor a YAML block of the docs"]
            config_file = yaml_files[config_file]
        try:
            if getattr(args, "grid", None):
                plan_sweep(parse_grid(args.grid), args.preset, config_file, args.overrides)
            else:
                load_config(config_file, args.overrides, preset=args.preset)
        except Exception as exc:  # noqa: BLE001 - the message is the finding
            problems.append(f"config: {exc}")
    return problems


def _check_options_exist(argv: list[str]) -> list[str]:
    """A synopsis or an inline mention (``dfer run ... --until STAGE``): the command and every option it names
    exist; placeholders and ``[...]`` brackets are not parsed."""
    parser, used, err = _command_parser(argv)
    if err:
        return [err]
    problems = []
    for tok in argv[used:]:
        for part in re.split(r"[\[\]/]", tok):
            if re.match(r"^--?[A-Za-z]", part) and part.split("=", 1)[0] not in parser._option_string_actions:
                problems.append(f"dfer {' '.join(argv[:used])} has no option {part.split('=', 1)[0]}")
    return problems


def _extras() -> set[str]:
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return set(doc["project"]["optional-dependencies"])


def _repo_source(target: str) -> Path | None:
    """The file of a repository script (``benchmarks/x.py``) or module (``pipeline.tools.config_doc``)."""
    if target.endswith(".py"):
        return ROOT / target
    spec = importlib.util.find_spec(target)
    origin = Path(spec.origin) if spec and spec.origin else None
    return origin if origin and ROOT in origin.parents and ".venv" not in origin.parts else None


def _check_other(cmd: list[str], yaml_files, full: bool) -> list[str]:
    prog, rest = cmd[0], cmd[1:]
    if prog == "dfer":
        return _check_dfer(rest, yaml_files) if full else _check_options_exist(rest)
    if prog == "accelerate" and rest[:3] == ["launch", "-m", "pipeline.cli"]:
        return _check_dfer(rest[3:], yaml_files) if full else _check_options_exist(rest[3:])
    if prog in ("python", "python3"):
        if rest[:2] == ["-m", "pipeline.cli"]:
            return _check_dfer(rest[2:], yaml_files) if full else _check_options_exist(rest[2:])
        if rest[:1] == ["-m"]:
            target, args = rest[1], rest[2:]
            if target.split(".")[0] in EXTERNAL:  # another project's module (vLLM's server): its options are its own
                return []
            if importlib.util.find_spec(target) is None:
                return [f"python -m {target}: no such module"]
        else:
            target, args = rest[0], rest[1:]
            if not (ROOT / target).is_file():
                return [f"python {target}: no such file in the repository"]
        source = _repo_source(target)
        if source is None:
            return []
        text = source.read_text(encoding="utf-8")
        return [f"{' '.join(cmd[:3])}: {a} is not an option of {_rel(source)}"
                for a in args if a.startswith("--") and f'"{a.split("=", 1)[0]}"' not in text]
    if prog == "pip":
        return [f"pip: the package has no extra [{e}] (pyproject.toml)"
                for arg in rest for e in re.findall(r"^\.\[([\w,-]+)\]$", arg)
                for e in e.split(",") if e not in _extras()]
    if prog == "docker" and rest[:1] == ["run"] and "dfer" in rest:  # the image's entrypoint is dfer
        args = rest[len(rest) - rest[::-1].index("dfer"):]
        return _check_dfer(args, yaml_files) if full else _check_options_exist(args)
    if prog in EXTERNAL:
        return []
    return [f"{prog}: a program the docs check does not know; add it to EXTERNAL in tests/test_docs.py or check it"]


def _page_ids():
    return [_rel(p) for p in PAGES]


@pytest.mark.parametrize("page", PAGES, ids=_page_ids())
def test_every_shell_command_parses_as_written(page, tmp_path):
    """```bash / ```console / ```sh blocks: each ``dfer`` command is parsed by dfer's own parser and its config
    loaded; a ``python`` command names a script or module that exists (with the options it gives it); a ``pip``
    extra exists."""
    yaml_files = _yaml_files(tmp_path)
    problems, n = [], 0
    for b in _blocks(page):
        if b.lang not in ("bash", "console", "sh", "shell"):
            continue
        for cmd in _shell_commands(b.body):
            n += 1
            problems += [f"{_rel(page)}:{b.line}: {' '.join(cmd)}\n    {p}" for p in _check_other(cmd, yaml_files, True)]
    assert not problems, "\n".join(problems)
    if page.name == "README.md" and page.parent == ROOT:
        assert n >= 10, "the README's commands were not found"


@pytest.mark.parametrize("page", PAGES, ids=_page_ids())
def test_every_command_mentioned_names_existing_commands_and_options(page):
    """Synopses (```text blocks) and commands in the prose (`dfer report RUN --out DIR`): the command and each
    option it names exist."""
    problems = []
    lines = [ln for b in _blocks(page) if b.lang == "text" for ln in re.sub(r"\\\n", " ", b.body).split("\n")]
    for text in [*lines, *_spans(page)]:
        text = text.split("#", 1)[0] if text.lstrip().startswith("dfer ") else text
        words = text.split()
        if len(words) < 2 or words[0] not in ("dfer", "python", "python3", "accelerate", "pip"):
            continue
        if words[0] != "dfer" and "..." not in words:
            try:
                problems += _check_other(shlex.split(text), {}, False)
            except ValueError as exc:
                problems.append(f"{text}: {exc}")
            continue
        if words[0] == "dfer" and not re.search(r"\.\.\.|[\[\]|]|(^|\s)(-h|--help)(\s|$)", text) \
                and not words[-1].startswith("-"):
            # a whole command: parsed and its config loaded, as in a shell block (a mention may leave out
            # the required arguments: `dfer compare --folds`, or end with the option it is about)
            found = [p for p in _check_dfer(words[1:], {}) if "arguments are required" not in p]
        else:
            found = _check_options_exist(words[1:]) if words[0] == "dfer" else []
        problems += [f"{text}\n    {p}" for p in found]
    assert not problems, f"{_rel(page)}:\n" + "\n".join(problems)


def _config_field(path: str):
    """The pydantic field of a config key (``keyframes.k``, ``classify.model``), or None."""
    model: type = PipelineConfig
    info = None
    for part in path.split("."):
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return None
        info = fields[part]
        model = info.annotation
    return info


def _value_problem(key: str, value: str, info) -> str | None:
    """Whether ``value`` (parsed as ``--set`` parses it) is one the field accepts; a section (``context.model=X``)
    goes through the config loader, which knows its shortcuts."""
    if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
        try:
            load_config(None, [f"{key}={value}"])
        except Exception as exc:  # noqa: BLE001 - the message is the finding
            return str(exc)
        return None
    try:
        TypeAdapter(Annotated[info.annotation, info]).validate_python(parse_override(f"{key}={value}")[1])
    except ValidationError as exc:
        return str(exc).replace("\n", " ")
    return None


@pytest.mark.parametrize("page", PAGES, ids=_page_ids())
def test_every_config_key_in_the_prose_exists_and_its_value_loads(page):
    """`keyframes.k=8`, `--set classify.shuffle=true`, `faces.max_gap_s`: the key exists, and a value written
    with it is one its field accepts (lists of choices such as `a|b` and placeholders are not checked)."""
    problems = []
    for span in _spans(page):
        for word in span.split():
            m = re.match(rf"^((?:{'|'.join(SECTIONS)})\.[A-Za-z_][\w.]*)(=(.*))?$", word)
            if not m or re.search(r"\.(j2|ya?ml|py|md|json|csv|npz|png)$", m.group(1)):
                continue
            key, value = m.group(1), m.group(3)
            info = _config_field(key)
            if info is None:
                problems.append(f"`{span}`: no config key {key}")
            elif value is not None and not re.search(r"[|<>]|\.\.\.|^[A-Z]$|,", value):
                if problem := _value_problem(key, value, info):
                    problems.append(f"`{span}`: {problem}")
    assert not problems, f"{_rel(page)}:\n" + "\n".join(problems)


REPO_PATH = re.compile(r"^(?:pipeline|stages|prompts|benchmarks|scripts|tests|examples|docs|\.ci)/[\w./-]*$"
                       r"|^(?:ARCHITECTURE\.md|Dockerfile|pyproject\.toml|README\.md)$")


@pytest.mark.parametrize("page", PAGES, ids=_page_ids())
def test_every_repository_path_in_the_prose_exists(page):
    """`benchmarks/msce_coverage.py`, `prompts/labels/`, `stages/base.py`: the file or folder is in the repository."""
    missing = [s for s in _spans(page) if REPO_PATH.match(s) and not (ROOT / s).exists()]
    assert not missing, f"{_rel(page)} names files that are not in the repository: {missing}"


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: links by their text, lower case, punctuation but ``-`` and ``_`` removed,
    spaces as ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"(?m)^#{1,6}\s+(.+?)\s*#*\s*$", _prose(page)):
        slug = _slug(m.group(1))
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


def _links(page: Path) -> list[str]:
    return re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", _prose(page))


@pytest.mark.parametrize("page", PAGES, ids=_page_ids())
def test_every_link_resolves_to_a_file_and_heading(page):
    problems = []
    for target in _links(page):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if ROOT not in dest.parents and dest != ROOT:
            problems.append(f"{target}: outside the repository")
        elif not dest.exists():
            problems.append(f"{target}: no such file")
        elif anchor and (dest.suffix != ".md" or anchor not in _anchors(dest)):
            problems.append(f"{target}: {_rel(dest)} has no heading #{anchor}")
    assert not problems, f"{_rel(page)}:\n" + "\n".join(problems)


def test_the_docs_index_lists_every_page_and_the_readme_links_the_index():
    index = ROOT / "docs" / "README.md"
    linked = {(index.parent / t.partition("#")[0]).resolve() for t in _links(index)}
    pages = {p.resolve() for p in (ROOT / "docs").glob("*.md") if p != index}
    assert sorted(p.name for p in pages - linked) == [], "pages missing from docs/README.md"
    assert "docs/README.md" in _links(ROOT / "README.md")


def test_the_readme_stays_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= 200, f"README.md has {lines} lines; reference material goes to docs/"


# --- the README's tour, run as written on the example clips --------------------------------------------------------

def _tour() -> list[list[str]]:
    """The ``dfer`` commands of the README from its first command to the end of its tour, in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    text = text[text.index("**1. Set up and run the main job**"):text.index("## Where to go next")]
    cmds = []
    for _, lang, body in _split_fences(text)[0]:
        if lang == "bash":
            cmds += [c for c in _shell_commands(body) if c[0] == "dfer"]
    return cmds


def _matches(expected: str, line: str) -> bool:
    """An output line as the README shows it: timings ``[0.0 s]`` and a trailing ``...`` stand for any text."""
    pattern = re.escape(expected).replace(r"\[0\.0\ s\]", r"\[[\d.]+ s\]")
    pattern = pattern[: -len(re.escape("..."))] + ".*" if expected.endswith("...") else pattern
    return re.fullmatch(pattern, line) is not None


def test_the_readme_tour_runs_end_to_end_on_the_example_clips(tmp_path, monkeypatch, capsys):
    """Each command of the tour, exactly as written, from a copy of the repository's example clips (offline: the
    model stages fall back to the embedded model), does what the README says it does."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DFER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tour = _tour()
    assert [c[:2] for c in tour] == [["dfer", "run"], ["dfer", "run"], ["dfer", "run"], ["dfer", "report"],
                                     ["dfer", "report"], ["dfer", "inspect"], ["dfer", "view"], ["dfer", "sweep"],
                                     ["dfer", "compare"]], "the tour changed: update this test's checks too"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    shown = readme.split("it prints:\n\n```text\n", 1)[1].split("\n```", 1)[0].splitlines()
    outputs = []
    for i, cmd in enumerate(tour):
        code = main(cmd[1:])
        out = capsys.readouterr()
        assert code == 0, f"{' '.join(cmd)} exited {code}:\n{out.err[-3000:]}"
        outputs.append(out.out + out.err)
        if i == 0:  # "Run command 1 again and every stage comes from the cache; ... it prints:"
            assert main(cmd[1:]) == 0
            again = (lambda o: (o.out + o.err).splitlines())(capsys.readouterr())
            assert all(any(_matches(s, ln) for ln in again) for s in shown), f"README shows:\n{shown}\ngot:\n{again}"

    run = tmp_path / "runs" / "demo"
    table = readme.split("| file | what |", 1)[1].split("\n\n", 1)[0]
    for row in table.strip().split("\n")[1:]:
        for name in re.findall(r"`([^`]+)`", row.split("|")[1]):
            assert list(run.glob(name)), f"the README says runs/demo holds {name}"
    k8 = outputs[1]
    for stage, computed in (("faces", False), ("expression", False), ("keyframes", True), ("context", True),
                            ("classify", True)):
        line = next(ln for ln in k8.splitlines() if ln.startswith(f"{stage}: "))
        assert line.startswith(f"{stage}: 0 cached, 6 computed" if computed else f"{stage}: 6 cached, 0 computed"), line
    assert (tmp_path / "runs" / "faces-only" / "manifest.jsonl").is_file()
    assert not (tmp_path / "runs" / "faces-only" / "predictions.csv").exists()
    assert (tmp_path / "runs" / "demo-estimated" / "report.md").is_file()
    assert "calibration estimated" in outputs[4]
    assert (run / "inspect" / "happy_mouth_opening.mp4.png").stat().st_size > 0
    assert (run / "view.html").stat().st_size > 0
    sweep = tmp_path / "sweeps" / "demo"
    for name in ("sweep.md", "sweep.png", "sweep.json", "k=2/report.md", "k=4/report.md"):
        assert (sweep / name).is_file(), name
    row = next(ln for ln in (sweep / "sweep.md").read_text(encoding="utf-8").splitlines() if ln.startswith("| [k=4]"))
    assert row.rstrip(" |").endswith("nothing"), f"k=4 is the demo run's setting and computes nothing: {row}"
    assert "| keyframes.k | `2` | `4` |" in outputs[8]
