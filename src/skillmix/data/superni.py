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
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skillmix.errors import SkillMixError

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "SKILLMIX_DATA_DIR"
DEFAULT_DATA_DIR = Path("..") / "shared" / "superni" / "tasks"
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_UNSEEN_FRACTION = 0.2  # share of the task pool held out as unseen tasks (about one in five)
OFFICIAL = "official"  # unseen tasks = the checkout's splits/default/test_tasks.txt


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
    # Task-level split (see `split_tasks`): the unseen tasks, whose `test` holds their evaluation
    # instances and whose `train` their few-shot adaptation pool (in the seeded order: k shots = the
    # first k); None when no task is held out. `task_split` describes how they were chosen.
    unseen: "MultiTaskData | None" = None
    task_split: dict[str, Any] | None = None

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
        summary = {
            "tasks": per_task,
            "num_tasks": len(per_task),
            "train": len(self.train),
            "test": len(self.test),
            "skipped": [s.name for s in self.skipped],
        }
        if self.unseen is not None:
            summary["unseen"] = self.unseen.summary()
        return summary


def _split_each(tasks, skipped: list, skip_invalid: bool, label: str, *split_args):
    """split_instances(task, *split_args) for every task -> (kept tasks, train, test); a task too small for the
    split raises, or with skip_invalid is appended to `skipped` with a warning."""
    kept, train, test = {}, [], []
    for task in tasks:
        try:
            task_train, task_test = split_instances(task, *split_args)
        except SkillMixError as err:
            if not skip_invalid:
                raise
            logger.warning("skipping %s: %s", label, err)
            skipped.append(Skipped(task.name, str(err)))
            continue
        kept[task.name] = task
        train.extend(task_train)
        test.extend(task_test)
    return kept, train, test


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
    unseen: float | list[str] | str | None = None,
    unseen_categories: list[str] | None = None,
) -> MultiTaskData:
    """Select tasks (names and/or `num_tasks` random ones), load them and split each one's instances.

    With `unseen` (a fraction, task names or "official") and/or `unseen_categories`, tasks are first
    split into seen and unseen ones (`split_tasks`, seeded by `seed`): the returned data holds only
    the seen tasks, and `data.unseen` the unseen ones, each split into its first `n_test` seeded
    instances (evaluation; no `max_instances` cap) and the rest (few-shot adaptation pool).
    """
    directory = resolve_data_dir(data_dir)
    all_names = list_tasks(directory)
    unseen_names: list[str] = []
    task_split = None
    if unseen is None and not unseen_categories:
        selected = select_tasks(all_names, n=num_tasks, names=names, seed=seed)
    else:
        official = official_split(directory) if unseen == OFFICIAL else None
        categories = read_categories(directory, all_names, skip_invalid=skip_invalid)
        selected, unseen_names = split_tasks(
            categories, unseen=None if unseen == OFFICIAL else unseen, holdout_categories=unseen_categories,
            seed=seed, official=official,
            training=num_tasks if names is None else select_tasks(all_names, n=num_tasks, names=names, seed=seed))
        task_split = describe_task_split(selected, unseen_names, categories, unseen, unseen_categories, seed)
    tasks, skipped = load_tasks(directory, names=selected, skip_invalid=skip_invalid)
    kept, train, test = _split_each(tasks, skipped, skip_invalid, "task", n_test, n_train, test_fraction, max_instances, seed)
    if not kept:
        raise SkillMixError(f"no usable task left in {directory} ({len(skipped)} skipped as invalid)")
    data = MultiTaskData(tasks=kept, train=train, test=test, skipped=skipped, task_split=task_split)
    if unseen_names:
        unseen_tasks, unseen_skipped = load_tasks(directory, names=unseen_names, skip_invalid=skip_invalid)
        # evaluation = first n_test of the seeded shuffle (as for seen tasks), the rest = adaptation pool
        held, pool, evaluation = _split_each(unseen_tasks, unseen_skipped, skip_invalid, "unseen task", n_test, None,
                                             test_fraction, None, seed)
        if not held:
            raise SkillMixError(f"no usable unseen task left in {directory} ({len(unseen_skipped)} skipped as invalid)")
        data.unseen = MultiTaskData(tasks=held, train=pool, test=evaluation, skipped=unseen_skipped)
    logger.info("SuperNI data: %d tasks, %d train / %d test instances%s", len(kept), len(train), len(test),
                f"; {len(data.unseen.tasks)} unseen tasks" if data.unseen else "")
    return data


# --- task-level split (unseen tasks) -------------------------------------------------------------

_CATEGORIES_RE = re.compile(r'"Categories"\s*:\s*(\[[^\]]*\])')


def read_categories(directory: str | os.PathLike, names: Sequence[str], skip_invalid: bool = False) -> dict[str, list[str]]:
    """name -> Categories of each task file, read from the file's head (the field precedes the
    instances in official files); files where it is not found there are parsed in full."""
    directory = Path(directory)
    result = {}
    for name in names:
        path = directory / f"{name}.json"
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                match = _CATEGORIES_RE.search(f.read(1 << 16))
        except OSError as err:
            raise SkillMixError(f"{path}: cannot read task file ({err.strerror})") from None
        try:
            value = json.loads(match.group(1)) if match else None
        except json.JSONDecodeError:
            value = None
        if not (isinstance(value, list) and all(isinstance(c, str) for c in value)):
            try:
                value = load_task(path).categories
            except SkillMixError as err:
                if not skip_invalid:
                    raise
                logger.warning("no categories for %s: %s", name, err)
                value = []
        result[name] = value
    return result


def first_category(categories: Sequence[str]) -> str:
    """The stratum of a task in `split_tasks`: its first category, "(none)" without one."""
    return categories[0] if categories else "(none)"


def _stratified_sample(pool: list[str], categories: Mapping[str, Sequence[str]], fraction: float, seed: int) -> list[str]:
    """round(fraction * len(pool)) tasks (at least 1, at most len(pool) - 1), spread over first
    categories in proportion to their size (largest remainder; ties in a seeded category order)."""
    groups: dict[str, list[str]] = defaultdict(list)
    for name in sorted(pool):
        groups[first_category(categories[name])].append(name)
    total = min(len(pool) - 1, max(1, int(fraction * len(pool) + 0.5)))
    order = sorted(groups)
    random.Random(f"{seed}:unseen").shuffle(order)
    rank = {c: i for i, c in enumerate(order)}
    exact = {c: total * len(g) / len(pool) for c, g in groups.items()}
    quota = {c: int(q) for c, q in exact.items()}
    for c in sorted(groups, key=lambda c: (-(exact[c] - quota[c]), rank[c]))[: total - sum(quota.values())]:
        quota[c] += 1
    chosen = []
    for c, group in sorted(groups.items()):
        chosen += random.Random(f"{seed}:unseen:{c}").sample(group, quota[c])
    return sorted(chosen)


def split_tasks(
    tasks: Mapping[str, Task | Sequence[str]],
    unseen: float | Sequence[str] | None = DEFAULT_UNSEEN_FRACTION,
    holdout_categories: Sequence[str] | None = None,
    seed: int = 0,
    training: Sequence[str] | int | None = None,
    official: tuple[Sequence[str], Sequence[str]] | None = None,
) -> tuple[list[str], list[str]]:
    """Task-level split into (seen task names, unseen task names), both sorted; deterministic in `seed`.

    `tasks` maps every available task name to its Task or its list of categories. Unseen tasks:
    - named hold-outs, taken from all of `tasks`: the names in `unseen` (a list), every task with a
      category in `holdout_categories`, and `official`'s test tasks ((train, test) name lists, as
      `official_split` returns them; tasks in neither list are left out, as excluded);
    - a fraction (`unseen` a float in (0, 1)) of the training pool, stratified by first category:
      round(fraction * pool) tasks (at least one, never the whole pool) shared out over categories in
      proportion to their size (largest remainder, ties broken in a seeded order), and drawn within a
      category with `random.Random(f"{seed}:unseen:{category}")`.
    The training pool is `training`: a list of task names (which must not be held out), a number N of
    random tasks (`select_tasks(candidates, n=N, seed=seed)`) or None (every candidate); candidates
    are the tasks not held out by name (and in `official`'s train list). With a fraction the pool is
    split; otherwise the whole pool is seen.
    """
    categories = {name: list(t.categories if isinstance(t, Task) else t) for name, t in tasks.items()}
    available = sorted(categories)
    held: set[str] = set()
    fraction = None
    if isinstance(unseen, str):
        raise SkillMixError(f"unseen tasks {unseen!r}: expected a fraction in (0, 1), a list of task names or '{OFFICIAL}'")
    if isinstance(unseen, (int, float)) and not isinstance(unseen, bool):
        if not 0.0 < unseen < 1.0:
            raise SkillMixError(f"unseen tasks fraction {unseen}: expected a number in (0, 1), e.g. 0.2")
        fraction = float(unseen)
    elif unseen is not None:
        held |= set(select_tasks(available, names=list(unseen)))  # validates the names
    if holdout_categories:
        known = sorted({c for cs in categories.values() for c in cs})
        for category in holdout_categories:
            if category not in known:
                raise SkillMixError(f"unseen category {category!r}: no task has it; expected one of: {', '.join(known)}")
        held |= {n for n in available if set(categories[n]) & set(holdout_categories)}
    candidates = [n for n in available if n not in held]
    if official is not None:
        train_list, test_list = set(official[0]), set(official[1])
        held |= {n for n in available if n in test_list}
        candidates = [n for n in candidates if n in train_list and n not in held]
    if isinstance(training, int) and not isinstance(training, bool):
        if not 0 < training <= len(candidates):
            raise SkillMixError(f"number of training tasks must be between 1 and {len(candidates)} (tasks not held out "
                                f"as unseen), got {training}")
        pool = select_tasks(candidates, n=training, seed=seed)
    elif training is not None:
        pool = select_tasks(available, names=list(training))
        for name in pool:
            if name in held:
                raise SkillMixError(f"task {name!r} is both a training task and an unseen task; expected disjoint "
                                    "training and unseen tasks")
            if official is not None and name not in official[0]:
                raise SkillMixError(f"training task {name!r} is not in the official splits/default/train_tasks.txt; "
                                    "expected official training tasks")
    else:
        pool = candidates
    if fraction is not None:
        if len(pool) < 2:
            raise SkillMixError(f"unseen tasks fraction {fraction}: the training pool has {len(pool)} task(s); "
                                "expected at least 2 to hold some out")
        held |= set(_stratified_sample(pool, categories, fraction, seed))
    seen = sorted(n for n in pool if n not in held)
    if not held:
        raise SkillMixError("the task split holds out no task; expected at least one unseen task")
    if not seen:
        raise SkillMixError("the task split leaves no training task; expected at least one seen task")
    return seen, sorted(held)


def describe_task_split(seen: list[str], unseen: list[str], categories: Mapping[str, Sequence[str]],
                        rule: float | list[str] | str | None, holdout_categories: list[str] | None,
                        seed: int) -> dict[str, Any]:
    """A JSON-able record of a task split (stored with runs) with a one-line `text` to print."""
    if rule == OFFICIAL:
        how = "official splits/default test tasks"
    elif isinstance(rule, (int, float)) and not isinstance(rule, bool):
        how = f"fraction {rule} of the training pool, stratified by first category, seed {seed}"
    elif rule:
        how = "named tasks"
    else:
        how = ""
    if holdout_categories:
        how = (how + " + " if how else "") + "categories " + ", ".join(holdout_categories)
    by_category = Counter(first_category(categories[n]) for n in unseen)
    text = (f"task split: {len(seen)} seen / {len(unseen)} unseen tasks ({how}); unseen: "
            + ", ".join(f"{n} [{first_category(categories[n])}]" for n in unseen))
    return {"rule": how, "seed": seed, "seen": list(seen), "unseen": list(unseen),
            "unseen_by_category": dict(sorted(by_category.items())), "text": text}
