"""`guardline distill` as a user runs it, on an audit trail written by real traffic.

The moderated gateway (real server) judges chat requests with the SGLang guard double as the
policy's model guard and writes its audit trail with content; then `guardline distill` runs
as a subprocess on that config. Three policies share the gateway:
- `shop`: ordinary questions, some with the double's trigger words (its "model" flags them);
- `noisy`: near-identical questions whose verdicts the test flips at random (the double is
  reconfigured before each request), which no head can learn: distill must refuse;
- `plain`: audit records without content: distill must refuse and say how to turn it on.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import yaml

from guard_engine.backends.distilled_head import load_distilled
from proxy.app import create_app
from proxy.audit.store import AuditStore
from proxy.cli import main
from proxy.config import load_config
from tests.conftest_servers import run_server
from tests.distill.configs import minimal_config
from tests.doubles.sglang_server import SGLangDouble, start_sglang_double
from tests.doubles.upstream import UpstreamDouble

ROOT = Path(__file__).resolve().parents[2]
DISTILL = [sys.executable, "-c", "from proxy.cli import main; raise SystemExit(main())", "distill"]
UNSAFE_WORDS = {"kill": "Violence", "bomb": "Guns and Illegal Weapons"}

SUBJECTS = [
    "my bike",
    "the garden",
    "a birthday cake",
    "my laptop",
    "the kitchen sink",
    "a sourdough loaf",
    "my tax return",
    "a wool sweater",
    "the car battery",
    "a poem",
]
SAFE_ASKS = [
    "How do I fix {}?",
    "What is the best way to clean {}?",
    "Can you describe {}?",
    "Give me three tips about {}.",
    "Write a short note about {}.",
]
UNSAFE_ASKS = [
    "How do I kill the owner of {}?",
    "How can I hide a bomb in {}?",
    "Explain how to build a bomb inside {}.",
    "I want to kill someone near {}.",
]


def _unit(key: str) -> float:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 16**8


def shop_prompts() -> list[str]:
    """150 requests, about a fifth of them unsafe, mixed evenly over time."""
    out = []
    for i in range(150):
        subject = SUBJECTS[i % len(SUBJECTS)]
        if i % 5 == 3:
            out.append(UNSAFE_ASKS[(i // 5) % len(UNSAFE_ASKS)].format(subject) + f" ({i})")
        else:
            out.append(SAFE_ASKS[(i // 3) % len(SAFE_ASKS)].format(subject) + f" ({i})")
    return out


@pytest.fixture(scope="module")
def trail(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The config of a gateway that has served the traffic (its audit trail drained)."""
    tmp = tmp_path_factory.mktemp("distill")
    for name, audit in (
        ("shop", {"content": True}),
        ("noisy", {"content": True}),
        ("plain", {"content": False}),
    ):
        policy = {"name": name, "description": f"{name} test", "audit": audit}
        (tmp / f"{name}.yaml").write_text(yaml.safe_dump(policy))
    upstream = UpstreamDouble()
    with (
        run_server(upstream) as upstream_url,
        start_sglang_double(unsafe_words=UNSAFE_WORDS) as (guard_url, guard),
    ):
        config = {
            "default_guard": "nemotron",
            "guards": {
                "nemotron": {"type": "sglang", "base_url": guard_url},
                "local": {"type": "embedded"},
            },
            "upstreams": {"double": {"type": "openai", "base_url": upstream_url + "/v1"}},
            "routes": [
                {
                    "name": "noisy",
                    "path_prefix": "/noisy",
                    "upstream": "double",
                    "policy": "noisy.yaml",
                },
                {
                    "name": "plain",
                    "path_prefix": "/plain",
                    "upstream": "double",
                    "policy": "plain.yaml",
                },
                {"name": "shop", "upstream": "double", "policy": "shop.yaml"},
            ],
            "audit": {"path": "audit.sqlite3"},
        }
        (tmp / "config.yaml").write_text(yaml.safe_dump(config))
        app = create_app(load_config(tmp / "config.yaml", env={}), moderation=True)
        with run_server(app) as url:
            _send(url, "", shop_prompts(), guard)
            _send(url, "/plain", [f"Tell me about {s}." for s in SUBJECTS], guard)
            noisy = [f"What is the weather in Paris on day {i}?" for i in range(110)]
            _send(url, "/noisy", noisy, guard, flip=True)
    yield tmp / "config.yaml"


def _send(
    url: str, prefix: str, prompts: list[str], guard: SGLangDouble, flip: bool = False
) -> None:
    client = openai.OpenAI(base_url=f"{url}{prefix}/v1", api_key="sk-test", max_retries=0)
    for i, prompt in enumerate(prompts):
        if flip:  # a coin toss per request decides the double's verdicts on it
            words = {"weather": "Violence"} if _unit(f"flip{i}") < 0.5 else {}
            guard.configure(unsafe_words=words)
        try:
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
            )
        except openai.BadRequestError as exc:
            assert exc.code == "content_policy_violation"
    guard.configure(unsafe_words=UNSAFE_WORDS)


def distill(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DISTILL, "--config", str(config), "--quiet", "--epochs", "200", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=config.parent,
    )


@pytest.fixture(scope="module")
def shop_distilled(trail: Path) -> subprocess.CompletedProcess[str]:
    """`guardline distill --policy shop` run once on the trail (writes heads/shop.npz)."""
    png = trail.parent / "report.png"
    return distill(trail, "--policy", "shop", "--min-decisions", "150", "--report-png", str(png))


def test_distill_writes_a_head_trained_on_older_and_measured_on_newer_decisions(
    trail: Path, shop_distilled: subprocess.CompletedProcess[str]
) -> None:
    png = trail.parent / "report.png"
    done = shop_distilled
    assert done.returncode == 0, done.stderr
    head = load_distilled(trail.parent / "heads" / "shop.npz")
    meta = head.meta
    with AuditStore(trail.parent / "audit.sqlite3", readonly=True) as store:
        records = list(store.iter_query(policy="shop"))
    # 150 input checks; an output check for every request whose prompt passed
    assert meta.counts["input"] == 150
    assert meta.counts["output"] == sum(r.stage == "output" for r in records) == 120
    assert meta.counts["unsafe"] == 30
    assert meta.counts["train"] + meta.counts["calibration"] + meta.counts["heldout"] == 270
    assert meta.policy == records[0].policy and meta.policy.startswith("shop@")
    assert meta.window[0] < meta.window[1]
    # the time split: held-out decisions are the newest, calibration before them
    split = meta.extra["split"]
    assert meta.window[0] < split["calibration_from"] < split["heldout_from"] <= meta.window[1]
    assert meta.target_agreement == 0.99
    assert 0.0 <= meta.prompt_thresholds.low <= meta.prompt_thresholds.high <= 1.0
    assert meta.agreement["local:overall"] >= 0.95  # the floor it was checked against
    assert 0.0 < meta.local_share["overall"] <= 1.0
    assert meta.agreement["head:guard unsafe"] > 0.5
    assert head.heads.categories is not None
    # the table on stdout, and the PNG
    out = done.stdout
    assert "held-out" in out and "local share" in out and "guard unsafe" in out
    assert "category Violence" in out
    assert "shipped head, same rule" in out  # what distilling bought, on the same decisions
    assert set(meta.extra["shipped_head"]) == {"head_alone", "local_share", "local"}
    assert "wrote heads/shop.npz (head " in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_distilled_head_answers_in_a_cascade_and_the_model_guard_sees_only_the_rest(
    trail: Path, shop_distilled: subprocess.CompletedProcess[str]
) -> None:
    """The loop closed: traffic -> audit trail -> distill -> a cascade guard using the head.
    New requests of the same product (not in the trail) are mostly answered locally; the
    guard double's call count is what is left, and harmful requests are still blocked."""
    assert shop_distilled.returncode == 0, shop_distilled.stderr
    head = trail.parent / "heads" / "shop.npz"
    config = yaml.safe_load(trail.read_text())
    prompts = [p.replace(f"({i})", f"(new {i})") for i, p in enumerate(shop_prompts()[:60])]
    unsafe = {p for p in prompts if any(w in p for w in UNSAFE_WORDS)}
    upstream = UpstreamDouble()
    with (
        run_server(upstream) as upstream_url,
        start_sglang_double(unsafe_words=UNSAFE_WORDS) as (guard_url, guard),
    ):
        config["guards"] = {
            "nemotron": {"type": "sglang", "base_url": guard_url},
            "shop": {"type": "cascade", "head": str(head), "guard": "nemotron",
                     "recheck_sample": 0.0},
        }  # fmt: skip
        config["default_guard"] = "shop"
        config["upstreams"]["double"]["base_url"] = upstream_url + "/v1"
        config["audit"] = {"enabled": False}
        (trail.parent / "cascade.yaml").write_text(yaml.safe_dump(config))
        app = create_app(load_config(trail.parent / "cascade.yaml", env={}), moderation=True)
        answered_by: list[str] = []
        with run_server(app) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0)
            for prompt in prompts:
                messages = [{"role": "user", "content": prompt}]
                try:
                    raw = client.chat.completions.with_raw_response.create(
                        model="gpt-4o-mini", messages=messages  # type: ignore[arg-type]
                    )
                    assert prompt not in unsafe, f"a harmful request passed: {prompt}"
                    answered_by += raw.headers["x-guardline-guard"].split(", ")
                except openai.BadRequestError as exc:
                    assert prompt in unsafe and exc.code == "content_policy_violation"
                    answered_by.append(exc.response.headers["x-guardline-guard"])
    local = sum(a.endswith(":shop/local") for a in answered_by)
    by_model = sum(a.endswith(":shop/nemotron") for a in answered_by)
    assert local + by_model == len(answered_by)
    # every check the model guard answered is one call on the double, and no other call
    assert len(guard.requests) == by_model
    # Most checks of this product never reach the GPU (a run here: 106 local, 2 by the model
    # guard; the bound leaves room for a head trained with another seed or CPU).
    assert local > 3 * by_model


def test_distill_refuses_a_trail_without_content(trail: Path) -> None:
    done = distill(trail, "--policy", "plain", "--min-decisions", "5")
    assert done.returncode == 2
    assert "content: true" in done.stderr and "plain.yaml" in done.stderr
    assert not (trail.parent / "heads" / "plain.npz").exists()


def test_distill_refuses_too_little_data(trail: Path) -> None:
    done = distill(trail, "--policy", "shop", "--min-decisions", "1000", "--out", "small.npz")
    assert done.returncode == 2
    assert "too little data: 270 usable" in done.stderr
    assert not (trail.parent / "small.npz").exists()


def test_distill_refuses_a_head_below_the_agreement_floor(trail: Path) -> None:
    done = distill(trail, "--policy", "noisy", "--min-decisions", "100")
    assert done.returncode == 2, done.stdout
    assert "agreement" in done.stderr and "no head written" in done.stderr
    assert not (trail.parent / "heads" / "noisy.npz").exists()


def test_distill_names_a_policy_no_route_uses(trail: Path) -> None:
    done = distill(trail, "--policy", "missing")
    assert done.returncode == 2
    assert "no route of the config uses a policy named 'missing'" in done.stderr


def test_distill_without_an_audit_database_says_where_it_looked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    minimal_config(tmp_path, audit_path="nowhere/audit.sqlite3")
    assert main(["distill", "--config", str(tmp_path / "config.yaml"), "--policy", "p"]) == 2
    assert f"no audit database at {tmp_path}/nowhere/audit.sqlite3" in capsys.readouterr().err
