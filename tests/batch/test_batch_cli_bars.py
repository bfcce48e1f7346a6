"""The CLI's progress rendering: an overall bar plus one line per worker slot."""

from __future__ import annotations

import io

from lowbit.batch.manifest import Job
from lowbit.cli.batch import _Bars


def test_bars_render_overall_and_per_worker_lines():
    buf = io.StringIO()
    bars = _Bars(workers=2, quiet=False, file=buf, disable=False)
    jobs = [Job(source="/s/a", scheme="int4", output="/o/a-int4"),
            Job(source="/s/b", scheme="nvfp4", output="/o/b-nvfp4")]
    bars("plan", None, None, {"jobs": jobs, "todo": [0, 1], "done": {}})
    bars("start", 0, 0, jobs[0].to_dict())
    bars("start", 1, 1, jobs[1].to_dict())
    bars("progress", 0, 0, (500_000, 1_000_000))
    bars("progress", 1, 1, (1_000_000, 1_000_000))
    assert bars.slots[0].n == 500_000 and bars.slots[0].total == 1_000_000
    bars("done", 0, 0, {"status": "ok"})
    bars("done", 1, 1, {"status": "failed", "error": "boom"})
    bars.close()
    text = buf.getvalue()
    assert "[0] a-int4" in text and "[1] b-nvfp4" in text
    assert "batch" in text and "2/2" in text
    assert "failed: b-nvfp4: boom" in text
    assert bars.slots == {}


def test_quiet_renders_nothing():
    buf = io.StringIO()
    bars = _Bars(workers=1, quiet=True, file=buf, disable=False)
    bars("plan", None, None, {"jobs": [], "todo": [], "done": {}})
    bars.close()
    assert buf.getvalue() == ""
