"""Super-NaturalInstructions task files: locate, validate, load, select tasks and split instances.

Task files use the official schema (github.com/allenai/natural-instructions, `tasks/*.json`); see
METHODS.md §6. Nothing here drops data silently: a bad file raises `SkillMixError` naming the
file and the field, or, with `skip_invalid=True`, is logged and reported in `skipped`.
"""
from __future__ import annotations

import difflib
import json
import logging
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skillmix.errors import SkillMixError

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "SKILLMIX_DATA_DIR"
DEFAULT_DATA_DIR = Path("..") / "shared" / "superni" / "tasks"
DEFAULT_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Instance:
    """One task instance: `outputs` holds every reference answer."""

    id: str
    input: str
    outputs: tuple[str, ...]
    task: str


@dataclass
class Task:
    """One SuperNI task; `definition` is `Definition[0]` when the file holds a list."""

    name: str
    definition: str
    positive_examples: list[dict[str, str]]
    negative_examples: list[dict[str, str]]
    instances: list[Instance]
    categories: list[str]
    path: Path


@dataclass(frozen=True)
class Skipped:
    """A task file left out under `skip_invalid`, with the reason."""

    name: str
    reason: str


# --- locating files ---------------------------------------------------------------------------


def _repo_default_dir() -> Path | None:
    """`shared/superni/tasks` beside the first ancestor of this package that has one."""
    for parent in Path(__file__).resolve().parents:
        candidate = parent.parent / "shared" / "superni" / "tasks"
        if candidate.is_dir():
            return candidate
    return None


def resolve_data_dir(path: str | os.PathLike | None = None) -> Path:
    """Task directory from `path`, else $SKILLMIX_DATA_DIR, else ../shared/superni/tasks."""
    if path is not None:
        chosen, origin = Path(path), "--data-dir"
    elif os.environ.get(DATA_DIR_ENV):
        chosen, origin = Path(os.environ[DATA_DIR_ENV]), f"${DATA_DIR_ENV}"
    elif DEFAULT_DATA_DIR.is_dir():
        chosen, origin = DEFAULT_DATA_DIR, "default"
    elif (repo_dir := _repo_default_dir()) is not None:
        chosen, origin = repo_dir, "default"
    else:
        raise SkillMixError(
            f"no SuperNI data directory: pass --data-dir DIR, set ${DATA_DIR_ENV}, "
            f"or provide {DEFAULT_DATA_DIR} (relative to the working directory or the repository)"
        )
    if not chosen.is_dir():
        raise SkillMixError(f"data directory {chosen} ({origin}) does not exist or is not a directory")
    if (chosen / "tasks").is_dir():  # full natural-instructions checkout: tasks/ + splits/
        chosen = chosen / "tasks"
    if not any(chosen.glob("*.json")):
        raise SkillMixError(f"data directory {chosen} ({origin}) contains no task files (*.json)")
    return chosen


def list_tasks(data_dir: str | os.PathLike | None = None) -> list[str]:
    """Sorted task names (file stems) in the resolved data directory."""
    return sorted(p.stem for p in resolve_data_dir(data_dir).glob("*.json"))


def official_split(data_dir: str | os.PathLike | None = None, name: str = "default") -> tuple[list[str], list[str]]:
    """(train task names, test task names) from a checkout's `splits/<name>/{train,test}_tasks.txt`."""
    root = resolve_data_dir(data_dir).parent
    split_dir = root / "splits" / name
    result = []
    for part in ("train", "test"):
        path = split_dir / f"{part}_tasks.txt"
        if not path.is_file():
            raise SkillMixError(f"{path}: split file not found (expected a natural-instructions checkout with splits/{name}/)")
        result.append([line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()])
    return result[0], result[1]


# --- validation -------------------------------------------------------------------------------


def _describe(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(path: Path, field_name: str, expected: str, value: Any) -> SkillMixError:
    return SkillMixError(f"{path.name}: field '{field_name}' must be {expected}, got {_describe(value)}")


def _require(obj: dict, key: str, path: Path, where: str = "") -> Any:
    if key not in obj:
        raise SkillMixError(f"{path.name}: missing field '{where}{key}'")
    return obj[key]


def _parse_definition(raw: Any, path: Path) -> str:
    first = raw[0] if isinstance(raw, list) and raw else raw
    if not isinstance(first, str) or not first.strip():
        raise _fail(path, "Definition", "a non-empty string or a list whose first item is one", raw)
    return first


def _parse_examples(raw: Any, key: str, path: Path) -> list[dict[str, str]]:
    if not isinstance(raw, list):
        raise _fail(path, key, "a list of {input, output} objects", raw)
    for i, example in enumerate(raw):
        if not isinstance(example, dict):
            raise _fail(path, f"{key}[{i}]", "an object with string 'input' and 'output'", example)
        for sub in ("input", "output"):
            if not isinstance(_require(example, sub, path, f"{key}[{i}]."), str):
                raise _fail(path, f"{key}[{i}].{sub}", "a string", example[sub])
    return raw


def _parse_instances(raw: Any, name: str, path: Path) -> list[Instance]:
    if not isinstance(raw, list):
        raise _fail(path, "Instances", "a list of {id, input, output} objects", raw)
    instances, first_index = [], {}
    for i, item in enumerate(raw):
        where = f"Instances[{i}]"
        if not isinstance(item, dict):
            raise _fail(path, where, "an object with 'id', 'input' and 'output'", item)
        instance_id = _require(item, "id", path, where + ".")
        if not isinstance(instance_id, str) or not instance_id:
            raise _fail(path, where + ".id", "a non-empty string", instance_id)
        if instance_id in first_index:
            raise SkillMixError(
                f"{path.name}: field '{where}.id' must be unique, got duplicate id {instance_id!r} "
                f"(also Instances[{first_index[instance_id]}])"
            )
        first_index[instance_id] = i
        text = _require(item, "input", path, where + ".")
        if not isinstance(text, str):
            raise _fail(path, where + ".input", "a string", text)
        outputs = _require(item, "output", path, where + ".")
        if not isinstance(outputs, list) or not outputs or not all(isinstance(o, str) for o in outputs):
            raise _fail(path, where + ".output", "a non-empty list of strings", outputs)
        instances.append(Instance(id=instance_id, input=text, outputs=tuple(outputs), task=name))
    return instances


def load_task(path: str | os.PathLike) -> Task:
    """Read and validate one task file; raise `SkillMixError` naming the file and field on bad input."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SkillMixError(
            f"{path.name}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg} (truncated or malformed file?)"
        ) from None
    except UnicodeDecodeError as err:
        raise SkillMixError(f"{path.name}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise SkillMixError(f"{path}: cannot read task file ({err.strerror})") from None
    if not isinstance(raw, dict):
        raise SkillMixError(f"{path.name}: top level must be a JSON object with the SuperNI task fields, got {type(raw).__name__}")
    categories = raw.get("Categories", [])
    if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
        raise _fail(path, "Categories", "a list of strings", categories)
    return Task(
        name=path.stem,
        definition=_parse_definition(_require(raw, "Definition", path), path),
        positive_examples=_parse_examples(raw.get("Positive Examples", []), "Positive Examples", path),
        negative_examples=_parse_examples(raw.get("Negative Examples", []), "Negative Examples", path),
        instances=_parse_instances(_require(raw, "Instances", path), path.stem, path),
        categories=categories,
        path=path,
    )


def load_tasks(
    data_dir: str | os.PathLike | None = None,
    names: list[str] | None = None,
    skip_invalid: bool = False,
) -> tuple[list[Task], list[Skipped]]:
    """Load the named tasks (all when `names` is None) sorted by name; bad files raise or, with `skip_invalid`, are skipped."""
    directory = resolve_data_dir(data_dir)
    selected = select_tasks(list_tasks(directory), names=names) if names is not None else list_tasks(directory)
    tasks, skipped = [], []
    for name in selected:
        try:
            tasks.append(load_task(directory / f"{name}.json"))
        except SkillMixError as err:
            if not skip_invalid:
                raise
            logger.warning("skipping invalid task file: %s", err)
            skipped.append(Skipped(name, str(err)))
    return tasks, skipped


# --- selection and splitting ------------------------------------------------------------------


def select_tasks(
    all_names: list[str], n: int | None = None, names: list[str] | None = None, seed: int = 0
) -> list[str]:
    """Sorted task names: `names` (validated), and/or `n` drawn as `random.Random(seed).sample(sorted(pool), n)`."""
    available = set(all_names)
    pool = sorted(all_names)
    if names is not None:
        wanted = [name.removesuffix(".json") for name in names]
        for name in wanted:
            if name not in available:
                close = [n for n in pool if n.startswith(name)][:3] or difflib.get_close_matches(name, pool, n=3)
                hint = f"; close matches: {', '.join(close)}" if close else ""
                raise SkillMixError(f"unknown task {name!r}: not among the {len(pool)} task files{hint}")
        pool = sorted(set(wanted))
    if n is None:
        return pool
    if not 0 < n <= len(pool):
        raise SkillMixError(f"number of random tasks must be between 1 and {len(pool)} (tasks available), got {n}")
    return sorted(random.Random(seed).sample(pool, n))


def split_instances(
    task: Task,
    n_test: int | None = None,
    n_train: int | None = None,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    max_instances: int | None = None,
    seed: int = 0,
) -> tuple[list[Instance], list[Instance]]:
    """(train, test) instances of one task: shuffle with `Random(f"{seed}:{task.name}")`, cap, then test first.

    The test set is the first `n_test` shuffled instances (default `round(test_fraction * pool)`),
    the train set the next `n_train` (default: all the rest of the capped pool).
    """
    pool = list(task.instances)
    random.Random(f"{seed}:{task.name}").shuffle(pool)
    if max_instances is not None:
        pool = pool[:max_instances]
    if n_test is None:
        if not 0.0 < test_fraction < 1.0:
            raise SkillMixError(f"test fraction must be in (0, 1), got {test_fraction}")
        n_test = round(test_fraction * len(pool))
    if n_test < 1:
        raise SkillMixError(
            f"{task.path.name}: field 'Instances' must hold enough instances for a test set, "
            f"got {len(pool)} usable (test size would be {n_test})"
        )
    n_train = len(pool) - n_test if n_train is None else n_train
    if n_train < 0 or n_test + n_train > len(pool):
        raise SkillMixError(
            f"{task.path.name}: field 'Instances' must hold at least {n_test + max(n_train, 0)} instances "
            f"for the split (n_test={n_test}, n_train={n_train}), got {len(pool)} usable"
        )
    return pool[n_test : n_test + n_train], pool[:n_test]


@dataclass
class MultiTaskData:
    """Selected tasks with per-task train/test instances; task id = index in the sorted `task_names`."""

    tasks: dict[str, Task]
    train: list[Instance]
    test: list[Instance]
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def task_names(self) -> list[str]:
        """Sorted task names; position = task id."""
        return sorted(self.tasks)

    def task_id(self, name: str) -> int:
        """Integer id of a task (its index in `task_names`)."""
        return self.task_names.index(name)

    def summary(self) -> dict[str, Any]:
        """Split sizes: per task {instances, train, test, categories} plus totals and skipped files."""
        train_counts = Counter(inst.task for inst in self.train)
        test_counts = Counter(inst.task for inst in self.test)
        per_task = {
            name: {
                "instances": len(task.instances),
                "train": train_counts[name],
                "test": test_counts[name],
                "categories": list(task.categories),
            }
            for name, task in sorted(self.tasks.items())
        }
        return {
            "tasks": per_task,
            "num_tasks": len(per_task),
            "train": len(self.train),
            "test": len(self.test),
            "skipped": [s.name for s in self.skipped],
        }


def load_multitask_data(
    data_dir: str | os.PathLike | None = None,
    names: list[str] | None = None,
    num_tasks: int | None = None,
    seed: int = 0,
    n_test: int | None = None,
    n_train: int | None = None,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    max_instances: int | None = None,
    skip_invalid: bool = False,
) -> MultiTaskData:
    """Select tasks (names and/or `num_tasks` random ones), load them and split each one's instances."""
    directory = resolve_data_dir(data_dir)
    selected = select_tasks(list_tasks(directory), n=num_tasks, names=names, seed=seed)
    tasks, skipped = load_tasks(directory, names=selected, skip_invalid=skip_invalid)
    kept, train, test = {}, [], []
    for task in tasks:
        try:
            task_train, task_test = split_instances(task, n_test, n_train, test_fraction, max_instances, seed)
        except SkillMixError as err:
            if not skip_invalid:
                raise
            logger.warning("skipping task: %s", err)
            skipped.append(Skipped(task.name, str(err)))
            continue
        kept[task.name] = task
        train.extend(task_train)
        test.extend(task_test)
    if not kept:
        raise SkillMixError(f"no usable task left in {directory} ({len(skipped)} skipped as invalid)")
    data = MultiTaskData(tasks=kept, train=train, test=test, skipped=skipped)
    logger.info("SuperNI data: %d tasks, %d train / %d test instances", len(kept), len(train), len(test))
    return data
