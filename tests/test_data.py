"""SuperNI data: loading, validation errors, task selection, splits, prompts, encoding, collation, CLI."""
import json
import logging
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from skillmix import cli
from skillmix.data import (
    DATA_DIR_ENV,
    Collator,
    EncodedExample,
    build_prompt,
    encode_examples,
    list_tasks,
    load_multitask_data,
    load_task,
    load_tasks,
    model_inputs,
    official_split,
    resolve_data_dir,
    select_tasks,
    split_instances,
)
from skillmix.data import superni
from skillmix.errors import SkillMixError

SHARED_TASKS = Path(__file__).resolve().parents[1].parent / "shared" / "superni" / "tasks"


# --- locating and loading ---------------------------------------------------------------------


def test_resolve_data_dir_explicit_env_and_checkout(tmp_path, data_write_task, monkeypatch):
    data_write_task()
    tasks_dir = tmp_path / "tasks"
    assert resolve_data_dir(tasks_dir) == tasks_dir
    assert resolve_data_dir(tmp_path) == tasks_dir  # official checkout: <root>/tasks
    other = tmp_path / "other"
    other.mkdir()
    (other / "task9_x.json").write_text("{}")
    monkeypatch.setenv(DATA_DIR_ENV, str(other))
    assert resolve_data_dir() == other
    assert resolve_data_dir(tasks_dir) == tasks_dir  # explicit beats the environment
    (other / "task9_x.json").unlink()
    with pytest.raises(SkillMixError, match=r"other \(\$SKILLMIX_DATA_DIR\) contains no task files"):
        resolve_data_dir()


def test_resolve_data_dir_errors(tmp_path, monkeypatch):
    with pytest.raises(SkillMixError, match=r"missing \(--data-dir\) does not exist"):
        resolve_data_dir(tmp_path / "missing")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(SkillMixError, match=rf"\${DATA_DIR_ENV}"):
        resolve_data_dir()
    monkeypatch.delenv(DATA_DIR_ENV)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(superni, "_repo_default_dir", lambda: None)
    with pytest.raises(SkillMixError, match=r"--data-dir.*SKILLMIX_DATA_DIR.*shared/superni/tasks"):
        resolve_data_dir()


def test_official_split_reads_checkout(tmp_path, data_write_task):
    data_write_task()
    split_dir = tmp_path / "splits" / "default"
    split_dir.mkdir(parents=True)
    (split_dir / "train_tasks.txt").write_text("task001_demo\ntask002_x\n\n")
    (split_dir / "test_tasks.txt").write_text("task003_y\n")
    assert official_split(tmp_path) == (["task001_demo", "task002_x"], ["task003_y"])
    with pytest.raises(SkillMixError, match=r"xlingual/train_tasks.txt: split file not found"):
        official_split(tmp_path, "xlingual")


def test_load_task_parses_official_schema(data_write_task):
    task = load_task(data_write_task("task001_demo", n_instances=4))
    assert task.name == "task001_demo"
    assert task.definition == "Answer the question"  # Definition[0]
    assert task.categories == ["Demo Category"]
    assert len(task.positive_examples) == 3 and len(task.negative_examples) == 1
    assert [inst.id for inst in task.instances] == [f"task001_demo-{i}" for i in range(4)]
    assert task.instances[0].outputs == ("answer 0", "alt")
    assert task.instances[1].task == "task001_demo"


BAD_FILES = [
    ("malformed", '{"Definition": ["x"], "Instances": [}', r"invalid JSON at line 1 column"),
    ("truncated", None, r"invalid JSON at line .* \(truncated or malformed file\?\)"),
    ("not_object", "[1, 2]", r"top level must be a JSON object"),
    ("no_definition", lambda t: t.pop("Definition"), r"missing field 'Definition'"),
    ("empty_definition", lambda t: t.update(Definition=[]), r"field 'Definition' must be a non-empty string"),
    ("no_instances", lambda t: t.pop("Instances"), r"missing field 'Instances'"),
    ("instances_not_list", lambda t: t.update(Instances={}), r"field 'Instances' must be a list"),
    ("no_output", lambda t: t["Instances"][4].pop("output"), r"missing field 'Instances\[4\]\.output'"),
    ("empty_output", lambda t: t["Instances"][4].update(output=[]),
     r"field 'Instances\[4\]\.output' must be a non-empty list of strings, got \[\]"),
    ("non_string_output", lambda t: t["Instances"][2].update(output=["ok", 3]),
     r"field 'Instances\[2\]\.output' must be a non-empty list of strings, got \[\"ok\", 3\]"),
    ("string_output", lambda t: t["Instances"][1].update(output="yes"), r"'Instances\[1\]\.output' must be a non-empty list"),
    ("duplicate_id", lambda t: t["Instances"][3].update(id=t["Instances"][1]["id"]),
     r"field 'Instances\[3\]\.id' must be unique, got duplicate id 'task_bad-1' \(also Instances\[1\]\)"),
    ("missing_id", lambda t: t["Instances"][0].pop("id"), r"missing field 'Instances\[0\]\.id'"),
    ("bad_example", lambda t: t["Positive Examples"][1].update(output=None), r"'Positive Examples\[1\]\.output' must be a string"),
    ("bad_categories", lambda t: t.update(Categories="Textual Entailment"), r"'Categories' must be a list of strings"),
]


@pytest.mark.parametrize("label,content,pattern", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_task_file_names_file_and_field(label, content, pattern, data_write_task, data_task_dict):
    if content is None:  # a valid file cut in the middle
        content = json.dumps(data_task_dict("task_bad"))[:150]
    elif callable(content):
        edit, content = content, data_task_dict("task_bad")
        edit(content)
    path = data_write_task("task_bad", content=content)
    with pytest.raises(SkillMixError) as info:
        load_task(path)
    message = str(info.value)
    assert message.startswith("task_bad.json: ")
    assert "\n" not in message
    assert re.search(pattern, message), message


def test_skip_invalid_warns_and_reports(tmp_path, data_write_task, caplog):
    data_write_task("task001_demo")
    data_write_task("task002_broken", content="{")
    with pytest.raises(SkillMixError, match=r"task002_broken.json: invalid JSON"):
        load_tasks(tmp_path)
    with caplog.at_level(logging.WARNING):
        tasks, skipped = load_tasks(tmp_path, skip_invalid=True)
    assert [t.name for t in tasks] == ["task001_demo"]
    assert [s.name for s in skipped] == ["task002_broken"]
    assert "task002_broken.json" in caplog.text


def test_unknown_task_lists_close_matches(tmp_path, data_write_task):
    data_write_task("task020_mctaco_span")
    data_write_task("task033_winogrande")
    with pytest.raises(SkillMixError, match=r"unknown task 'task020_mctaco_spam'.*close matches: task020_mctaco_span"):
        load_tasks(tmp_path, names=["task020_mctaco_spam"])
    with pytest.raises(SkillMixError, match=r"unknown task 'task033'.*close matches: task033_winogrande$"):
        load_tasks(tmp_path, names=["task033"])
    assert [t.name for t in load_tasks(tmp_path, names=["task033_winogrande.json"])[0]] == ["task033_winogrande"]


# --- selection and splits ---------------------------------------------------------------------


def test_select_random_tasks_is_documented_seeded_sample():
    names = [f"task{i:03d}_t" for i in range(40)]
    shuffled = random.Random(1).sample(names, 40)
    chosen = select_tasks(shuffled, n=10, seed=7)
    assert chosen == sorted(random.Random(7).sample(sorted(names), 10))
    assert chosen == select_tasks(names, n=10, seed=7)  # input order does not matter
    assert chosen != select_tasks(names, n=10, seed=8)
    assert set(select_tasks(names, n=3, names=names[:5])) <= set(names[:5])
    assert select_tasks(names, names=["task002_t", "task001_t"]) == ["task001_t", "task002_t"]
    with pytest.raises(SkillMixError, match=r"between 1 and 40"):
        select_tasks(names, n=41)


def test_split_is_seeded_disjoint_and_capped(data_write_task):
    task = load_task(data_write_task("task001_demo", n_instances=50))
    train, test = split_instances(task, n_test=10, seed=3)
    assert (len(train), len(test)) == (40, 10)
    assert not {i.id for i in train} & {i.id for i in test}
    assert split_instances(task, n_test=10, seed=3) == (train, test)
    assert split_instances(task, n_test=10, seed=4)[1] != test
    train, test = split_instances(task, max_instances=20, seed=3)  # default test fraction 0.2
    assert (len(train), len(test)) == (16, 4)
    train, test = split_instances(task, n_test=5, n_train=7, seed=3)
    assert (len(train), len(test)) == (7, 5)


def test_split_too_few_instances_is_an_error(tmp_path, data_write_task):
    data_write_task("task001_demo", n_instances=30)
    data_write_task("task002_small", n_instances=8)
    with pytest.raises(SkillMixError, match=r"task002_small.json: field 'Instances' must hold at least 15 .* got 8"):
        load_multitask_data(tmp_path, n_test=5, n_train=10)
    data = load_multitask_data(tmp_path, n_test=5, n_train=10, skip_invalid=True)
    assert data.task_names == ["task001_demo"]
    assert [s.name for s in data.skipped] == ["task002_small"]
    with pytest.raises(SkillMixError, match=r"enough instances for a test set, got 1"):
        split_instances(load_task(data_write_task("task003_one", n_instances=1)))


def test_multitask_data_task_ids_and_summary(tmp_path, data_write_task):
    for name, n in [("task300_c", 20), ("task100_a", 30), ("task200_b", 10)]:
        data_write_task(name, n_instances=n)
    data = load_multitask_data(tmp_path, n_test=4, seed=1)
    assert data.task_names == ["task100_a", "task200_b", "task300_c"]
    assert data.task_id("task300_c") == 2
    summary = data.summary()
    assert summary["tasks"]["task100_a"] == {"instances": 30, "train": 26, "test": 4, "categories": ["Demo Category"]}
    assert (summary["train"], summary["test"], summary["num_tasks"]) == (48, 12, 3)
    # a task's split does not depend on which other tasks were selected
    alone = load_multitask_data(tmp_path, names=["task200_b"], n_test=4, seed=1)
    assert [i.id for i in alone.test] == [i.id for i in data.test if i.task == "task200_b"]


@pytest.mark.skipif(not SHARED_TASKS.is_dir(), reason="../shared/superni/tasks not present")
def test_shared_superni_files_load():
    names = list_tasks(SHARED_TASKS)
    assert len(names) == 89
    tasks, skipped = load_tasks(SHARED_TASKS)
    assert not skipped
    assert sum(len(t.instances) for t in tasks) == 6878
    assert min(len(t.instances) for t in tasks) == 21
    assert len({c for t in tasks for c in t.categories}) == 13


# --- prompts ----------------------------------------------------------------------------------


def test_prompt_matches_tk_instruct_template(data_write_task):
    task = load_task(data_write_task())
    expected = (
        "Definition: Answer the question.\n\n"
        " Positive Example 1 -\nInput: What is 1+1.\n Output: 2.\n\n"
        " Positive Example 2 -\nInput: Capital of France?\n Output: Paris.\n\n"
        "Now complete the following example -\nInput: Is it done.\nOutput: "
    )
    prompt = build_prompt(task, "  Is it done ")
    assert prompt.text == expected and prompt.num_examples == 2 and not prompt.truncated
    one = build_prompt(task, "Is it done").text
    assert "Positive Example 1" in one and "Positive Example 2" not in build_prompt(task, "x", 1).text
    assert build_prompt(task, "Is it done", num_pos_examples=0).text == (
        "Definition: Answer the question.\n\nNow complete the following example -\nInput: Is it done.\nOutput: "
    )
    assert build_prompt(task, "q", num_pos_examples=0, add_definition=False).text.startswith("Now complete")


def test_prompt_length_control_drops_examples_then_cuts(data_write_task, data_causal_tokenizer):
    task = load_task(data_write_task())
    no_second = build_prompt(task, "Is it done", num_pos_examples=1).text
    budget = len(no_second.encode())  # byte tokenizer: one token per byte
    prompt = build_prompt(task, "Is it done", tokenizer=data_causal_tokenizer, max_source_tokens=budget)
    assert prompt == type(prompt)(no_second, num_examples=1, examples_dropped=1, truncated=False)
    prompt = build_prompt(task, "Is it done", tokenizer=data_causal_tokenizer, max_source_tokens=40)
    assert prompt.truncated and prompt.num_examples == 0
    assert prompt.text == build_prompt(task, "Is it done", num_pos_examples=0).text[:40]
    with pytest.raises(SkillMixError, match="needs a tokenizer"):
        build_prompt(task, "x", max_source_tokens=10)


# --- encoding and collation -------------------------------------------------------------------


@pytest.fixture
def data_small(tmp_path, data_write_task):
    data_write_task("task001_demo", n_instances=6)
    data_write_task("task002_demo", n_instances=6)
    return load_multitask_data(tmp_path, n_test=2, seed=0)


@pytest.mark.parametrize("tokenizer_fixture", ["data_causal_tokenizer", "data_bos_tokenizer"])
def test_encode_causal_answer_follows_output_colon(data_small, tokenizer_fixture, request):
    tokenizer = request.getfixturevalue(tokenizer_fixture)
    encoded, report = encode_examples(data_small, "train", tokenizer, "causal")
    assert len(encoded) == len(data_small.train) == 8 and not report.any
    for example, instance in zip(encoded, data_small.train):
        prompt = tokenizer.decode(example.prompt_ids, skip_special_tokens=True)
        assert prompt.endswith("Input: " + instance.input + ".\nOutput:")
        assert [tokenizer.decode(ids) for ids in example.target_ids] == [" " + o for o in instance.outputs]
        assert example.task_id == data_small.task_id(instance.task)
    assert (tokenizer.bos_token_id in encoded[0].prompt_ids) == (tokenizer_fixture == "data_bos_tokenizer")


def test_encode_counts_truncation_and_warns(data_small, data_seq2seq_tokenizer, caplog):
    with caplog.at_level(logging.WARNING):
        encoded, report = encode_examples(
            data_small, "test", data_seq2seq_tokenizer, "seq2seq", max_source_tokens=60, max_target_tokens=4
        )
    assert report.examples == 4 and report.sources_truncated == 4 and report.prompts_shortened == 4
    assert report.targets == 4 + sum(len(i.outputs) > 1 for i in data_small.test)
    assert report.targets_truncated == 4  # "answer k</s>" is over 4 tokens, "alt</s>" is not
    assert all(len(e.prompt_ids) == 60 and e.prompt_ids[-1] == data_seq2seq_tokenizer.eos_token_id for e in encoded)
    assert all(ids[-1] == data_seq2seq_tokenizer.eos_token_id and len(ids) <= 4 for e in encoded for ids in e.target_ids)
    assert "4/4 prompts truncated" in caplog.text


def test_causal_train_batch_masks_prompt_and_pads_right(data_small, data_causal_tokenizer):
    encoded, _ = encode_examples(data_small, "train", data_causal_tokenizer, "causal")
    examples = [encoded[0], encoded[5]]
    batch = Collator(data_causal_tokenizer, "causal")(examples)
    eos, pad = data_causal_tokenizer.eos_token_id, data_causal_tokenizer.pad_token_id
    for row, example in enumerate(examples):
        n_prompt = len(example.prompt_ids)
        ids, labels = batch["input_ids"][row].tolist(), batch["labels"][row].tolist()
        n = len(ids) - ids[::-1].index(eos)  # real tokens end with the appended EOS
        assert ids[:n_prompt] == example.prompt_ids and labels[:n_prompt] == [-100] * n_prompt
        assert labels[n_prompt:n] == ids[n_prompt:n] and labels[n_prompt : n - 1] in [list(t) for t in example.target_ids]
        assert labels[n:] == [-100] * (len(labels) - n) and ids[n:] == [pad] * (len(ids) - n)
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (len(ids) - n)
    assert batch["task_ids"].tolist() == [e.task_id for e in examples]
    assert batch["meta"][1] == {"task": examples[1].task, "id": examples[1].id, "references": list(examples[1].references)}


def test_generation_batch_pads_left_without_labels(data_small, data_causal_tokenizer):
    encoded, _ = encode_examples(data_small, "test", data_causal_tokenizer, "causal")
    batch = Collator(data_causal_tokenizer, "causal", generate=True)(encoded)
    assert "labels" not in batch
    for row, example in enumerate(encoded):
        width = batch["input_ids"].shape[1]
        assert batch["input_ids"][row].tolist()[width - len(example.prompt_ids) :] == example.prompt_ids
        assert batch["attention_mask"][row].sum().item() == len(example.prompt_ids)
        assert batch["attention_mask"][row, -1].item() == 1


def test_seq2seq_batch_and_model_inputs(data_small, data_seq2seq_tokenizer):
    encoded, _ = encode_examples(data_small, "train", data_seq2seq_tokenizer, "seq2seq")
    batch = Collator(data_seq2seq_tokenizer, "seq2seq", padding_side="left")(encoded[:3])
    for row, example in enumerate(encoded[:3]):
        labels = batch["labels"][row].tolist()
        assert labels[: len(example.target_ids[0])] in [list(t) for t in example.target_ids]  # right-padded
        assert batch["input_ids"][row].tolist()[-len(example.prompt_ids) :] == example.prompt_ids
    assert set(model_inputs(batch, uses_task_ids=False)) == {"input_ids", "attention_mask", "labels"}
    assert set(model_inputs(batch, uses_task_ids=True)) == {"input_ids", "attention_mask", "labels", "task_ids"}
    with pytest.raises(SkillMixError, match="model kind must be one of causal, seq2seq"):
        Collator(data_seq2seq_tokenizer, "encoder")


def test_training_reference_choice_is_seeded(data_causal_tokenizer):
    example = EncodedExample("task001_demo", 0, "id0", [5, 6], ([7], [8], [9]), ("a", "b", "c"))
    draws = [Collator(data_causal_tokenizer, "causal", seed=s)([example] * 30)["labels"][:, 2].tolist() for s in (0, 0, 1)]
    assert draws[0] == draws[1] and draws[0] != draws[2] and set(draws[0]) == {7, 8, 9}


# --- CLI --------------------------------------------------------------------------------------


def test_cli_summary_prints_tasks_lengths_and_totals(tmp_path, data_write_task, capsys):
    data_write_task("task001_demo", n_instances=10)
    data_write_task("task002_demo", n_instances=5)
    assert cli.main(["data", "summary", "--data-dir", str(tmp_path / "tasks"), "--num-pos-examples", "0",
                     "--n-test", "2"]) == 0
    out = capsys.readouterr().out
    # definition-only prompt of "question i": "Definition: Answer the question.\n\nNow complete ... Input: question i.\nOutput: "
    words = len("Definition: Answer the question. Now complete the following example - Input: question 0. Output:".split())
    task_line = next(line for line in out.splitlines() if line.startswith("task001_demo"))
    assert task_line.split()[-5:] == ["10", "8", "2", f"{words:.1f}", f"{(10 * 2 + 1) / 11:.1f}"]
    total = next(line for line in out.splitlines() if line.startswith("TOTAL"))
    assert "TOTAL (2 tasks)" in total and total.split()[-5:-2] == ["15", "11", "4"]
    assert "whitespace words" in out and "skipped invalid: 0" in out


def test_cli_summary_with_tokenizer_counts_tokens(tmp_path, data_write_task, data_causal_tokenizer, capsys):
    data_write_task("task001_demo", n_instances=5)
    data_causal_tokenizer.save_pretrained(tmp_path / "tok")
    argv = ["data", "summary", "--data-dir", str(tmp_path / "tasks"), "--tokenizer", str(tmp_path / "tok"),
            "--max-source-tokens", "60", "--max-target-tokens", "3", "--n-test", "1"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "tokens of" in out and "5/5 prompts cut to 60 tokens (5 lost positive examples), 5/6 targets over 3 tokens" in out


@pytest.mark.parametrize(
    "files,extra,pattern",
    [
        ({"task001_demo": '{"Instances": []'}, [], r"^error: task001_demo.json: invalid JSON"),
        ({"task001_demo": None}, ["--tasks", "task001_dmeo"], r"^error: unknown task 'task001_dmeo'"),
        ({"task001_demo": None}, ["--n-test", "20"], r"^error: task001_demo.json: field 'Instances' must hold"),
        ({}, [], r"^error: data directory .* contains no task files"),
    ],
    ids=["bad_json", "unknown_task", "too_small", "empty_dir"],
)
def test_cli_errors_exit_2_with_one_line(files, extra, pattern, tmp_path, data_write_task, capsys):
    for name, content in files.items():
        data_write_task(name, content=content)
    assert cli.main(["data", "summary", "--data-dir", str(tmp_path / "tasks"), *extra]) == 2
    err = capsys.readouterr().err
    assert re.match(pattern, err) and err.count("\n") == 1 and "Traceback" not in err


def test_cli_summary_speaks_trains_vocabulary(tmp_path, data_write_task, capsys):
    """`data summary` takes train's data options: --data-seed (not --seed) seeds the split, --tasks N or names."""
    for i in range(4):
        data_write_task(f"task00{i}_demo", n_instances=10)
    argv = ["data", "summary", "--data-dir", str(tmp_path / "tasks"), "--tasks", "2", "--n-test", "3"]

    def chosen(*extra):
        assert cli.main(argv + list(extra)) == 0
        out = capsys.readouterr().out
        return sorted(line.split()[0] for line in out.splitlines() if line.startswith("task00"))

    assert chosen("--data-seed", "0") == chosen()
    assert any(chosen("--data-seed", str(seed)) != chosen() for seed in range(1, 6))
    assert chosen("--tasks", "task001_demo,task003_demo") == ["task001_demo", "task003_demo"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv + ["--seed", "1"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --seed" in capsys.readouterr().err


def test_cli_skip_invalid_counts_skipped_file(tmp_path, data_write_task, capsys):
    data_write_task("task001_demo")
    data_write_task("task002_bad", content='{"Definition": ["x"]}')
    assert cli.main(["data", "summary", "--data-dir", str(tmp_path / "tasks"), "--skip-invalid", "--n-test", "2"]) == 0
    captured = capsys.readouterr()
    assert "TOTAL (1 tasks)" in captured.out
    assert "skipped invalid: 1\n  task002_bad.json: missing field 'Instances'" in captured.out


def test_console_entry_has_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "skillmix.cli", "data", "summary", "--data-dir", str(tmp_path / "none")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2 and result.stderr.startswith("error: data directory") and "Traceback" not in result.stderr


def test_causal_prompts_over_budget_keep_their_end():
    from skillmix.data import encode_examples, load_multitask_data
    from skillmix.hub import tiny_tokenizer

    tok = tiny_tokenizer()
    data = load_multitask_data(names=["task020_mctaco_span_based_question"], n_test=2, n_train=2)
    encoded, report = encode_examples(data, "train", tok, "causal", max_source_tokens=64)
    assert report.sources_truncated == 2
    for ex in encoded:
        assert 60 <= len(ex.prompt_ids) <= 64
        assert tok.decode(ex.prompt_ids).endswith("Output:")
        assert tok.decode(ex.prompt_ids).startswith("Definition:")
