"""`lmforge serve` as a real subprocess, spoken to with the official openai client."""

import concurrent.futures
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import torch
import torch.nn.functional as F

from lmforge.rundir.load import load_run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(run: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    command = [sys.executable, "-m", "lmforge", "serve", str(run), "--port", str(port), *flags]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return server, base
        except httpx.HTTPError:
            time.sleep(0.1)
        if server.poll() is not None:
            raise AssertionError(server.stderr.read().decode())
    server.kill()
    raise AssertionError("the server did not start")


@pytest.fixture(scope="module")
def server(trained_run: Path) -> Iterator[str]:
    process, base = _start(trained_run)
    yield base
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)


def test_models_and_health(client: openai.OpenAI, server: str) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == ["run"]
    assert httpx.get(f"{server}/health").json()["status"] == "ok"
    info = httpx.get(f"{server}/tokenizer_info").json()
    assert info["model_max_length"] == 32


def test_streamed_text_equals_the_whole_answer(client: openai.OpenAI) -> None:
    ask = {"model": "run", "prompt": "The list", "max_tokens": 12, "temperature": 0}
    whole = client.completions.create(**ask)
    pieces = [c.choices[0].text for c in client.completions.create(**ask, stream=True)]
    assert "".join(pieces) == whole.choices[0].text
    assert whole.usage.completion_tokens > 0
    chat = {"model": "run", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    answer = client.chat.completions.create(**chat, max_tokens=8)
    streamed = client.chat.completions.create(**chat, max_tokens=8, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in streamed)
    assert text == answer.choices[0].message.content


def test_echo_logprobs_are_the_models_own(client: openai.OpenAI, trained_run: Path) -> None:
    _, model, tokenizer = load_run(trained_run)
    ids = tokenizer.encode("The list type and the dict")
    scored = client.completions.create(
        model="run", prompt=ids, max_tokens=0, echo=True, logprobs=0, temperature=0
    )
    got = scored.choices[0].logprobs.token_logprobs
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor([ids]))[0], dim=-1)
    expected = [logp[i - 1, ids[i]].item() for i in range(1, len(ids))]
    assert got[0] is None
    assert len(got) == len(ids)
    for a, b in zip(got[1:], expected, strict=True):
        assert abs(a - b) <= 1e-4


def test_token_id_prompts_and_stop_strings(client: openai.OpenAI, trained_run: Path) -> None:
    _, _, tokenizer = load_run(trained_run)
    as_text = client.completions.create(model="run", prompt="The", max_tokens=10, temperature=0)
    as_ids = client.completions.create(
        model="run", prompt=tokenizer.encode("The"), max_tokens=10, temperature=0
    )
    assert as_ids.choices[0].text == as_text.choices[0].text
    text = as_text.choices[0].text
    if len(text.strip()) > 2:  # stop at a piece of the greedy text: it is cut before it
        stop = text.strip()[1:3]
        cut = client.completions.create(
            model="run", prompt="The", max_tokens=10, temperature=0, stop=[stop]
        )
        assert stop not in cut.choices[0].text
        assert cut.choices[0].finish_reason == "stop"


def test_ten_concurrent_clients_get_their_own_answers(client: openai.OpenAI) -> None:
    prompts = [f"Paragraph {i}:" for i in range(10)]

    def ask(prompt: str) -> str:  # greedy: the seed (one per client) does not matter
        seed = prompts.index(prompt)
        reply = client.completions.create(
            model="run", prompt=prompt, max_tokens=6, temperature=0, seed=seed
        )
        return reply.choices[0].text

    alone = [ask(p) for p in prompts]
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        together = list(pool.map(ask, prompts))
    assert together == alone  # batched greedy decoding gives each request its own tokens
    health = httpx.get(f"{client.base_url}".replace("/v1/", "/health")).json()
    assert health["largest_batch"] > 1  # and requests were decoded together


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ("{not json", 400, "not valid JSON"),
        ({"prompt": "x", "temperature": "hot"}, 422, "temperature"),
        ({"prompt": "x", "temperature": 5}, 400, "between"),
        ({"prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
        ({"prompt": "x " * 40, "max_tokens": 16}, 400, "context"),
        ({"prompt": [1, 2, 10**9]}, 400, "token ids"),
        ({"prompt": {"a": 1}}, 422, "prompt"),
        ({"prompt": "x", "n": 2}, 400, "n must be 1"),
    ],
)
def test_bad_completion_requests_get_openai_errors_and_the_server_goes_on(
    server: str, body: object, status: int, needle: str
) -> None:
    content = body if isinstance(body, str) else json.dumps(body)
    reply = httpx.post(
        f"{server}/v1/completions",
        content=content,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert needle in error["message"]
    assert {"message", "type", "param", "code"} <= set(error)
    assert httpx.get(f"{server}/health").status_code == 200


def test_bad_chat_requests_and_ignored_fields(client: openai.OpenAI, server: str) -> None:
    for messages in ([], [{"role": "wizard", "content": "x"}], [{"role": "user"}]):
        reply = httpx.post(f"{server}/v1/chat/completions", json={"messages": messages})
        assert reply.status_code == 400, reply.text
    ignored = {"user": "me", "presence_penalty": 0.5, "stream_options": {"include_usage": True}}
    answer = client.chat.completions.create(
        model="run",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        temperature=0,
        extra_body=ignored,
    )
    assert answer.choices[0].message.role == "assistant"


def test_a_client_leaving_mid_stream_frees_the_model(server: str, client: openai.OpenAI) -> None:
    body = {"model": "run", "prompt": "The", "max_tokens": 20, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server}/v1/completions", json=body, timeout=30) as reply:
        next(reply.iter_lines())  # one event, then hang up
    done = client.completions.create(model="run", prompt="The", max_tokens=4, temperature=0)
    assert done.choices[0].finish_reason in ("length", "stop")


def test_an_api_key_is_required_when_set(trained_run: Path) -> None:
    process, base = _start(trained_run, "--api-key", "secret")
    try:
        without = httpx.post(f"{base}/v1/completions", json={"prompt": "x", "max_tokens": 1})
        assert without.status_code == 401
        assert without.json()["error"]["type"] == "authentication_error"
        good = openai.OpenAI(base_url=f"{base}/v1", api_key="secret", max_retries=0)
        assert good.completions.create(model="run", prompt="x", max_tokens=1).choices
        assert httpx.get(f"{base}/health").status_code == 200  # health needs no key
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_a_missing_extra_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from lmforge.errors import LMForgeError
    from lmforge.jobs.serve import require_serve_extra

    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if it were not installed
    with pytest.raises(LMForgeError, match=r"pip install 'lmforge\[serve\]'"):
        require_serve_extra()


def test_the_chat_page_is_served(server: str) -> None:
    page = httpx.get(f"{server}/")
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assert "/v1/chat/completions" in page.text  # it talks to this server, no CDN
    assert "http" not in page.text.replace("http-equiv", "")  # nothing fetched from elsewhere


def _browser() -> str | None:
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_browser() is None, reason="no Chromium installed for Playwright")
def test_the_chat_page_in_a_browser(server: str) -> None:  # pragma: no cover - needs a browser
    playwright = pytest.importorskip("playwright.sync_api", reason="Playwright not installed")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_browser())
        page = browser.new_page()
        page.goto(f"{server}/")
        page.fill("#text", "hello")
        page.click("#send")
        page.wait_for_selector(".assistant")
        page.click("#stop")
        page.wait_for_function("!document.getElementById('send').disabled")
        assert page.locator(".user").inner_text() == "hello"
        browser.close()
