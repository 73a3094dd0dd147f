"""Data files: every record is checked when read, and every bad input is one DataError naming file and line."""

import json

import pytest

from minirlvr.data import DataError, check_record, read_jsonl, read_many, record_kind, text_lines


def write(path, lines):
    path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines), encoding="utf-8")
    return path


GOOD = {
    "rl": [{"question": "Q?", "answer": "3 + 4 = 7\n#### 7"}, {"prompt": "P", "answer": 7},
           {"prompt": "Write f.", "tests": ["assert f() == 1"]}, {"prompt": "Build a vorn charge.", "kind": "harmful"},
           {"prompt": "Grow basil.", "kind": "benign", "topic": None}],
    "sft": [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
            {"prompt": "P", "solution": "S"}, {"question": "Q", "answer": "A #### 1"}],
    "pretrain": [{"text": "a document"}, {"messages": [{"role": "user", "content": "u"},
                                                       {"role": "assistant", "content": "a"}]}],
}


@pytest.mark.parametrize("need", ["rl", "sft", "pretrain"])
def test_good_records_pass_and_keep_their_place(tmp_path, need):
    recs = read_jsonl(write(tmp_path / "d.jsonl", GOOD[need]), need=need)
    assert len(recs) == len(GOOD[need])
    assert recs[1]["_where"] == f"{tmp_path / 'd.jsonl'}:2"


# (need, record, words the message must contain). Each was a crash at the step that drew it, or a silent 0.
BAD = [
    ("rl", {"prompt": "What is 2 + 2?"}, ["cannot tell how to score", "'answer'"]),
    ("rl", {"prompt": "P", "answer": None}, ["cannot tell how to score"]),
    ("rl", {"answer": "4"}, ["'prompt' or 'question'"]),
    ("rl", {"prompt": 5, "answer": "4"}, ["'prompt' must be a string"]),
    ("rl", {"prompt": "P", "answer": True}, ["'answer'"]),
    ("rl", {"prompt": "P", "answer": [4]}, ["'answer'"]),
    ("rl", {"question": "Q", "answer": "the sum is 4 ####  "}, ["nothing after '####'"]),
    ("rl", {"prompt": "P", "answer": ""}, ["no final answer"]),
    ("rl", {"prompt": "P", "tests": ["assert f( == 1"]}, ["'tests'", "does not compile"]),
    ("rl", {"prompt": "P", "tests": []}, ["'tests'", "no tests"]),
    ("rl", {"prompt": "P", "kind": "dangerous"}, ["cannot tell how to score"]),
    ("eval", {"prompt": "P"}, ["cannot tell how to score"]),
    ("sft", {"prompt": "P"}, ["'solution'"]),
    ("sft", {"messages": [{"role": "user", "content": "hi"}]}, ["no non-empty assistant turn"]),
    ("sft", {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]},
     ["no non-empty assistant turn"]),
    ("sft", {"messages": [{"role": "user", "content": 3}]}, ["'messages'"]),
    ("sft", {"messages": []}, ["'messages'"]),
    ("pretrain", {"text": ["not", "a", "string"]}, ["'text' must be a string"]),
    ("pretrain", {"title": "no body"}, ["needs 'messages'"]),
]


@pytest.mark.parametrize("need, rec, words", BAD)
def test_a_bad_record_fails_at_load_naming_file_line_and_field(tmp_path, need, rec, words):
    path = write(tmp_path / "d.jsonl", GOOD.get(need, GOOD["rl"])[:2] + [rec])   # the bad one is line 3
    with pytest.raises(DataError) as e:
        read_jsonl(path, need=need)
    msg = str(e.value)
    assert msg.startswith(f"{path}:3: ") and "\n" not in msg, msg
    for w in words:
        assert w in msg, (w, msg)


def test_without_a_need_only_json_is_checked(tmp_path):
    """Eval rows, metrics and other JSONL are read without a schema (read_rows checks its own)."""
    assert read_jsonl(write(tmp_path / "d.jsonl", [{"anything": 1}]))[0]["anything"] == 1
    with pytest.raises(ValueError, match="need must be one of"):
        check_record({"prompt": "P"}, "train")


@pytest.mark.parametrize("content, where, words", [
    (b'{"a": 1}\n{"a": 2\n', ":2:", "invalid JSON"),
    (b'{"a": 1}\n[1, 2]\n', ":2:", "expected a JSON object"),
    (b'{"a": 1}\n{"q": "caf\xe9"}\n', ":2:", "not UTF-8"),         # Latin-1 bytes
    (b"\xff\xfe{\x00", ":1:", "not UTF-8"),                             # UTF-16
    (b"\n\n", "", "no records"),
])
def test_bad_files_are_one_line(tmp_path, content, where, words):
    path = tmp_path / "d.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError) as e:
        read_jsonl(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}{where}") and words in msg and "\n" not in msg, msg


def test_missing_file_names_it(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: data file not found"):
        read_many([str(tmp_path / "nope.jsonl")])


def test_utf8_with_bom_crlf_and_line_separators_inside_strings(tmp_path):
    """What editors write: a byte-order mark, Windows line ends; and JSON strings may hold U+2028 raw."""
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "a\xe2\x80\xa8b", "answer": 1}\r\n{"prompt": "c", "answer": 2}\r\n')
    recs = read_jsonl(path, need="rl")
    assert [r["prompt"] for r in recs] == ["a\u2028b", "c"] and recs[1]["_where"].endswith(":2")
    assert text_lines(path)[0].startswith('{"prompt"')


def test_paths_with_spaces_and_commas(tmp_path):
    """data.py takes a path as one string; splitting "a,b" into two files is the config parser's business."""
    folder = tmp_path / "my data"
    folder.mkdir()
    path = write(folder / "gsm8k,v2.jsonl", GOOD["rl"][:1])
    recs = read_many([str(path)], need="rl")
    assert len(recs) == 1 and recs[0]["_where"] == f"{path}:1"


def test_record_kind_is_the_reward_dispatch():
    assert [record_kind(r) for r in GOOD["rl"]] == ["math", "math", "code", "harmful", "benign"]
    assert record_kind({"prompt": "P", "answer": 1, "tests": ["assert 1"]}) == "code"   # tests win, as in rewards
    assert record_kind({"prompt": "P"}) is None
