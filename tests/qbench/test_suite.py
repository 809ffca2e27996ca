"""Suite files: parsing, expansion into jobs, and one-line errors for what is wrong in them."""

from __future__ import annotations

import pytest

from qbench.errors import QbenchError
from qbench.nightly.suite import load_suite, parse_override


def _write(tmp_path, text: str):
    path = tmp_path / "suite.toml"
    path.write_text(text)
    return path


def test_jobs_expand_per_backend_with_defaults_and_relative_paths(tmp_path):
    (tmp_path / "plans").mkdir()
    (tmp_path / "plans" / "mine.json").write_text("{}")
    suite = load_suite(
        _write(
            tmp_path,
            """
[suite]
name = "farm"
timeout_s = 60
[defaults]
backends = ["onnxruntime", "openvino"]
recipes = ["fp32", "plans/mine.json"]
threads = 2
[[job]]
model = "digits-cnn"
[[job]]
model = "models/net.onnx"
data = "data/net.npz"
backends = ["onnxruntime"]
protocol = "quick"
""",
        )
    )
    assert suite.name == "farm" and suite.timeout_s == 60
    assert [j.job_id for j in suite.jobs] == [
        "farm:digits-cnn/onnxruntime",
        "farm:digits-cnn/openvino",
        "farm:net/onnxruntime",
    ]
    first, _, own = suite.jobs
    assert first.spec.subject.model == "digits-cnn"
    assert first.spec.recipes == ("fp32", str(tmp_path / "plans" / "mine.json"))
    assert own.spec.subject.model == str(tmp_path / "models" / "net.onnx")
    assert own.spec.subject.data == str(tmp_path / "data" / "net.npz")
    spec = own.run_spec(threads=2)
    assert spec.subject.model == own.spec.subject.model and spec.subject.data == own.spec.subject.data
    assert spec.timing.protocol == "quick" and spec.target.threads == 2


def test_config_hash_follows_settings_and_file_contents(tmp_path):
    (tmp_path / "p.json").write_text("{}")
    text = '[[job]]\nmodel = "digits-cnn"\nrecipes = ["fp32", "p.json"]\n'
    job = load_suite(_write(tmp_path, text)).jobs[0]
    before = job.config_hash(2)
    assert before == load_suite(_write(tmp_path, text)).jobs[0].config_hash(2)
    assert job.config_hash(1) != before
    (tmp_path / "p.json").write_text('{"layers": {}}')
    assert job.config_hash(2) != before


def test_overrides_apply_to_every_job(tmp_path):
    suite = load_suite(
        _write(tmp_path, '[[job]]\nmodel = "digits-cnn"\nthreads = 2\n[[job]]\nmodel = "minilm-l6"\n'),
        dict([parse_override("threads=1")]),
    )
    assert {j.spec.target.threads for j in suite.jobs} == {1}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[job]]\nmodel = 'digits-cnn'\nthreds = 2\n", "unknown key 'threds'"),
        ("[[job]]\nmodel = 'digits-cnn'\nthreads = 'two'\n", "threads = 'two' has the wrong type"),
        ("[[job]]\nmodel = 'digits-cnn'\nthreads = 0\n", "`threads` must be a whole number from 1 to"),
        ("[[job]]\nmodel = 'digits-cnn'\nprotocol = 'fast'\n", "timing protocol 'fast'"),
        ("[[job]]\ndata = 'x.npz'\n", "has no model"),
        ("[suite]\nname = 'x'\n", "lists no jobs"),
        ("[[job]]\nmodel = 'digits-cnn'\n[[job]]\nmodel = 'digits-cnn'\n", "job names repeat"),
        ("[jobs]\nmodel = 'digits-cnn'\n", "unknown table(s) ['jobs']"),
        ("[[job]\nmodel = 'digits-cnn'\n", "is not valid TOML"),
        ("[suite]\nname = '../../../escaped'\n[[job]]\nmodel = 'digits-cnn'\n", "is not a valid name"),
        ("[suite]\nname = '/etc/cron.d'\n[[job]]\nmodel = 'digits-cnn'\n", "is not a valid name"),
        ("[[job]]\nmodel = 'digits-cnn'\nname = '../up'\n", "job name '../up' is not a valid name"),
        ("[[job]]\nmodel = 'digits-cnn'\nname = 'a..b'\n", "is not a valid name"),
        ("[[job]]\nmodel = 'digits-cnn'\nmin_seconds = inf\n", "min_seconds = inf"),
        ("[[job]]\nmodel = 'digits-cnn'\ntimeout_s = -1\n", "timeout_s = -1"),
        ("[suite]\ntimeout_s = nan\n[[job]]\nmodel = 'digits-cnn'\n", "timeout_s = nan"),
    ],
)
def test_bad_suites_fail_with_one_line(tmp_path, text, message):
    with pytest.raises(QbenchError, match=None) as error:
        load_suite(_write(tmp_path, text))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_missing_suite_file_and_bad_override(tmp_path):
    with pytest.raises(QbenchError, match="suite file not found"):
        load_suite(tmp_path / "none.toml")
    with pytest.raises(QbenchError, match="--set wants KEY=VALUE"):
        parse_override("threadz=1")


def test_log_paths_stay_inside_the_results_dir(tmp_path):
    from qbench.nightly.runner import inside

    assert inside(tmp_path, "nightly-logs/ci/job__onnxruntime.log").startswith(str(tmp_path.resolve()))
    (tmp_path / "link").symlink_to("/tmp")
    for escape in ("../x.log", "/etc/passwd", "link/x.log"):
        with pytest.raises(QbenchError, match="outside the results directory"):
            inside(tmp_path, escape)


def test_a_file_metric_is_relative_to_the_suite_and_hashed_by_content(tmp_path):
    (tmp_path / "metrics.py").write_text("def score(o, l, r):\n    return 1.0\n")
    job = load_suite(_write(tmp_path, '[[job]]\nmodel = "digits-cnn"\nmetric = "metrics.py:score"\n')).jobs[0]
    assert job.spec.subject.metric == f"{tmp_path / 'metrics.py'}:score"
    before = job.config_hash(2)
    (tmp_path / "metrics.py").write_text("def score(o, l, r):\n    return 0.5\n")
    assert job.config_hash(2) != before
