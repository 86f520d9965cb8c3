"""The prompt enhancer: the transformers backend on the tiny preset's own Gemma, and the vLLM
backend against a stand-in server (vLLM itself needs a GPU, so it cannot run here)."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI, Request

from engines.config import EnhancerConfig
from engines.errors import ConfigError
from engines.prompt_enhancer import TransformersEnhancer, VllmEnhancer, create_enhancer, enhancement_messages


@pytest.fixture(scope="module")
def enhancer(staged, tiny_config):
    return TransformersEnhancer(tiny_config.replace(enhancer=EnhancerConfig(enabled=True, max_new_tokens=24)),
                                staged.components)


def test_transformers_enhancer_is_seeded_and_rewrites(enhancer):
    a = enhancer.enhance(["a fox in the snow", "a fox in the snow", "rain"], [1, 2, 1])
    assert all(a) and all(text != "a fox in the snow" for text in a[:2])
    assert a[0] != a[1]  # another seed, another rewrite
    assert enhancer.enhance(["a fox in the snow"], [1]) == a[:1]  # the same seed, the same rewrite
    assert a[0][0].isalpha()  # cleaned the way LTX-2 cleans Gemma's answers


def test_the_conversation_is_ltx2s_template():
    from diffusers.pipelines.ltx2.utils import T2V_DEFAULT_SYSTEM_PROMPT

    system, user = enhancement_messages("a fox")
    assert system == {"role": "system", "content": T2V_DEFAULT_SYSTEM_PROMPT.strip()}
    assert user == {"role": "user", "content": "user prompt: a fox"}
    assert enhancement_messages("a fox", "Be brief.")[0]["content"] == "Be brief."


def test_no_enhancer_unless_enabled(tiny_config):
    with pytest.raises(ConfigError, match="model.enhancer.enabled"):
        create_enhancer(tiny_config)


class FakeVllmServer:
    """Stands in for vLLM's OpenAI-compatible server (which needs a GPU): the chat completions
    route with vLLM's response shape, recording every request body it receives."""

    def __init__(self, answer: str) -> None:
        self.requests: list[dict] = []
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> dict:
            body = await request.json()
            self.requests.append(body)
            prompt = body["messages"][-1]["content"].removeprefix("user prompt: ")
            return {"id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "created": int(time.time()),
                    "model": body["model"], "usage": {"prompt_tokens": 10, "completion_tokens": 12, "total_tokens": 22},
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": answer.format(prompt=prompt)}}]}

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> FakeVllmServer:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def test_vllm_enhancer_sends_ltx2s_conversation_and_cleans_the_answer():
    with FakeVllmServer('\u201c{prompt}, in golden light, with birdsong\u201d') as server:
        settings = EnhancerConfig(enabled=True, backend="vllm", url=server.url, model="prompt-enhancer",
                                  max_new_tokens=200, temperature=0.7)
        enhancer = VllmEnhancer(settings)
        out = enhancer.enhance(["a fox", "rain on a roof", "a choir"], [1, 2, 3])
        enhancer.close()
    assert out == ['a fox, in golden light, with birdsong"', 'rain on a roof, in golden light, with birdsong"',
                   'a choir, in golden light, with birdsong"']  # leading quote gone, as clean_response does
    assert sorted(r["seed"] for r in server.requests) == [1, 2, 3]
    for body in server.requests:
        assert body["model"] == "prompt-enhancer" and body["max_tokens"] == 200 and body["temperature"] == 0.7
        assert body["messages"] == enhancement_messages(body["messages"][-1]["content"].removeprefix("user prompt: "))


def test_vllm_enhancer_keeps_the_prompt_when_the_answer_is_empty():
    with FakeVllmServer("  ") as server:
        enhancer = VllmEnhancer(EnhancerConfig(enabled=True, backend="vllm", url=server.url, model="m"))
        assert enhancer.enhance(["a fox"], [1]) == ["a fox"]
        enhancer.close()
