"""The local stack (`./build.sh serve`) driven by the real OpenAI Python SDK.

Each test class starts `wasm-epp-stack` (the binary `./build.sh serve` runs) as a child process on
free loopback ports, talks to it only through `openai.OpenAI(base_url=.../v1)`, and stops it with
SIGINT, as a person pressing Ctrl-C would; a stack that does not exit 0 fails the run.

Request and response shapes are the OpenAI API reference's (platform.openai.com/docs/api-reference):
`chat/create` and `completions/create` (`model`, `messages` / `prompt`, `max_tokens`, `stream`,
`stream_options.include_usage`: "an additional chunk will be streamed before the data: [DONE]
message. The usage field on this chunk shows the token usage statistics for the entire request, and
the choices field will always be an empty array"), `models/list`, and the error-codes guide
(400 bad request, 404 not found, 429 rate limit, 503 overloaded / unavailable), which the SDK maps
to `BadRequestError`, `NotFoundError`, `RateLimitError` and `InternalServerError`, all
`APIStatusError`s.

Run by `./build.sh test`; by hand:
    WASM_EPP_STACK=target/tools/wasm-epp-stack VENV/bin/python -m unittest -v e2e/python/test_openai_sdk.py
"""

import os
import re
import signal
import subprocess
import threading
import time
import unittest

import openai

MODEL = "Qwen/Qwen3-32B"
STACK = os.environ.get("WASM_EPP_STACK", "")
READY = re.compile(r"wasm-epp-stack: ready at (http://\S+/v1)")
START_TIMEOUT_S = 60
# Simulated pods run this many times faster than the H100 timing they model: a few seconds in all.
SPEED = "100"


class Stack:
    """One `wasm-epp-stack` child process on free loopback ports."""

    def __init__(self, *flags):
        if not STACK:
            raise RuntimeError("set WASM_EPP_STACK to the wasm-epp-stack binary")
        argv = [STACK, "--gateway", "127.0.0.1:0", "--pod-port", "0", "--pods", "2", "--speed", SPEED, *flags]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines = []
        self.base_url = None
        ready = threading.Event()

        def read():
            for line in self.proc.stdout:
                self.lines.append(line)
                m = READY.search(line)
                if m and self.base_url is None:
                    self.base_url = m.group(1)
                    ready.set()
            ready.set()

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        if not ready.wait(START_TIMEOUT_S) or self.base_url is None:
            self.proc.kill()
            raise RuntimeError("wasm-epp-stack did not get ready:\n" + "".join(self.lines))

    def client(self, **kw):
        return openai.OpenAI(base_url=self.base_url, api_key="unused-by-the-stack", max_retries=0, timeout=30, **kw)

    def stop(self):
        """Ctrl-C; returns (exit code, everything it printed)."""
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = "killed after 15 s"
        self.reader.join(5)
        return code, "".join(self.lines)


class StackTestCase(unittest.TestCase):
    FLAGS = ()

    @classmethod
    def setUpClass(cls):
        cls.stack = Stack(*cls.FLAGS)
        cls.client = cls.stack.client()

    @classmethod
    def tearDownClass(cls):
        code, out = cls.stack.stop()
        if code != 0:
            raise AssertionError(f"wasm-epp-stack did not stop cleanly on Ctrl-C (exit {code}):\n{out}")
        if "served " not in out:
            raise AssertionError(f"wasm-epp-stack printed no summary on Ctrl-C:\n{out}")


class ServeDefaults(StackTestCase):
    """The stack as `./build.sh serve` runs it: the picker, the served model allow-listed."""

    def test_models_list_names_the_served_model(self):
        models = self.client.models.list()
        self.assertEqual([m.id for m in models.data], [MODEL])

    def test_chat_completion(self):
        r = self.client.chat.completions.create(
            model=MODEL,
            messages=[
                {"role": "system", "content": "You are a terse assistant."},
                {"role": "user", "content": "Say something."},
            ],
            max_tokens=8,
        )
        self.assertEqual(r.object, "chat.completion")
        self.assertEqual(r.model, MODEL)
        self.assertEqual(len(r.choices), 1)
        self.assertEqual(r.choices[0].message.role, "assistant")
        self.assertTrue(r.choices[0].message.content)
        self.assertEqual(r.choices[0].finish_reason, "length")
        self.assertEqual(r.usage.completion_tokens, 8)
        self.assertGreater(r.usage.prompt_tokens, 0)
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + 8)

    def test_chat_stream_ends_with_a_usage_chunk(self):
        stream = self.client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Count to eight."}],
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        self.assertGreaterEqual(len(chunks), 3, chunks)
        self.assertTrue(all(c.object == "chat.completion.chunk" for c in chunks))
        *body, last = chunks
        text = "".join(c.choices[0].delta.content or "" for c in body if c.choices)
        self.assertEqual(len(text.split()), 8, text)
        self.assertTrue(all(c.usage is None for c in body), "usage only on the last chunk")
        self.assertEqual(body[-1].choices[0].finish_reason, "length")
        self.assertEqual(last.choices, [])
        self.assertEqual(last.usage.completion_tokens, 8)
        self.assertGreater(last.usage.prompt_tokens, 0)

    def test_completion(self):
        r = self.client.completions.create(model=MODEL, prompt="Write as if you were a critic: San Francisco", max_tokens=5)
        self.assertEqual(r.object, "text_completion")
        self.assertEqual(len(r.choices[0].text.split()), 5)
        self.assertEqual(r.usage.completion_tokens, 5)

    def test_completion_stream_ends_with_a_usage_chunk(self):
        stream = self.client.completions.create(
            model=MODEL,
            prompt="Write as if you were a critic: San Francisco",
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        *body, last = chunks
        self.assertEqual(len("".join(c.choices[0].text for c in body).split()), 5)
        self.assertEqual(last.choices, [])
        self.assertEqual(last.usage.completion_tokens, 5)

    def test_a_shared_system_prompt_stays_on_one_pod(self):
        # The pod that served each request, from podsim's own response header (not the gateway's).
        system = "You review restaurants in San Francisco. " * 100
        served = set()
        for q in ("Where for lunch?", "Where for dinner?", "Where for coffee?"):
            raw = self.client.chat.completions.with_raw_response.create(
                model=MODEL,
                messages=[{"role": "system", "content": system}, {"role": "user", "content": q}],
                max_tokens=2,
            )
            raw.parse()
            served.add(raw.headers.get("x-podsim-endpoint"))
        self.assertEqual(len(served), 1, f"prefix affinity: {served}")
        self.assertNotIn(None, served)

    def test_a_model_the_pool_does_not_serve_is_not_found(self):
        with self.assertRaises(openai.NotFoundError) as cm:
            self.client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
            )
        e = cm.exception
        self.assertEqual(e.status_code, 404)
        self.assertEqual(e.type, "not_found_error")
        self.assertIn("gpt-4o", e.message)

    def test_a_body_that_is_not_json_is_a_bad_request(self):
        with self.assertRaises(openai.BadRequestError) as cm:
            self.client.post(
                "/chat/completions",
                cast_to=object,
                content=b'{"model": "Qwen/Qwen3-32B", "messages": [{"role": "user", "content": "Hi"}',
                options={"headers": {"Content-Type": "application/json"}},
            )
        self.assertEqual(cm.exception.status_code, 400)
        self.assertEqual(cm.exception.type, "invalid_request_error")

    def test_a_model_that_cannot_be_a_header_value_is_a_bad_request(self):
        with self.assertRaises(openai.BadRequestError) as cm:
            self.client.chat.completions.create(
                model="Qwen/Qwen3-32B\r\nx-evil: 1", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
            )
        self.assertEqual(cm.exception.status_code, 400)
        self.assertIn("header", cm.exception.message)


class Saturated(StackTestCase):
    """A pool the picker sees as saturated and a model it allows but no pod serves.

    The collector scrapes once (then not for 60 s) and the picker calls pod metrics older than
    1 ms stale; stale pods count as saturated (GIE's utilization detector), so a sheddable request
    (objective `batch`, priority -1) is refused with 429 while a normal one is served.
    """

    FLAGS = (
        "--interval-ms",
        "60000",
        "--allow-models",
        f"{MODEL},offline-model",
        "--module-config",
        '{"picker": {"saturation": {"metricsStalenessThresholdMs": 1}, "degradeAfterMs": 0},'
        ' "objectives": {"batch": -1}}',
    )

    def chat(self, model=MODEL, **kw):
        return self.client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Summarise the report."}], max_tokens=4, **kw
        )

    def test_a_sheddable_request_on_a_saturated_pool_is_rate_limited(self):
        time.sleep(0.01)  # the one scrape is now > 1 ms old
        with self.assertRaises(openai.RateLimitError) as cm:
            self.chat(extra_headers={"x-gateway-inference-objective": "batch"})
        e = cm.exception
        self.assertIsInstance(e, openai.APIStatusError)
        self.assertEqual(e.status_code, 429)
        self.assertEqual(e.response.headers.get("retry-after"), "1")
        self.assertIn("saturated", e.message)
        # The same request without the sheddable objective is served: the 429 is the shedding.
        self.assertEqual(self.chat().usage.completion_tokens, 4)

    def test_an_allowed_model_with_no_pod_is_unavailable(self):
        with self.assertRaises(openai.InternalServerError) as cm:
            self.chat(model="offline-model")
        e = cm.exception
        self.assertIsInstance(e, openai.APIStatusError)
        self.assertEqual(e.status_code, 503)
        self.assertIn("no ready endpoint", e.message)


if __name__ == "__main__":
    unittest.main()
