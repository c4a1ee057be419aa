"""The batcher: merge/split, one call per batch, failures, bounds, deadlines, and parity."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving import batching
from serving._proto import grpc_service_pb2 as pb
from serving._proto import grpc_service_pb2_grpc as pb_grpc
from serving.batching import Batcher, BatchingConfig
from serving.client import decode_outputs
from serving.errors import DeadlineExceededError, InferenceFailedError, QueueFullError
from serving.merging import merge, split
from serving.runtime import ModelRuntime, OnnxModel, TensorSpec
from serving.statistics import ModelStats
from tests.serving.conftest import ServerThread, make_settings
from tests.serving.helpers import good_request, infer_request


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=8))
def test_merge_then_split_is_identity(sizes):
    rng = np.random.default_rng(len(sizes))
    feeds = [{"x": rng.normal(size=(n, 3)), "y": rng.integers(0, 9, size=(n, 2))} for n in sizes]
    merged = merge(feeds)
    assert merged["x"].shape == (sum(sizes), 3)
    for original, part in zip(feeds, split(merged, sizes), strict=True):
        for key in original:
            np.testing.assert_array_equal(part[key], original[key])


def test_split_rejects_outputs_without_batch_axis():
    with pytest.raises(ValueError, match="leading dimension"):
        split({"out": np.ones((3, 2))}, [1, 1])


class FakeRuntime(ModelRuntime):
    """Records every call; sleeps to let requests pile up; can be told to fail."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.name, self.version = "fake", "1"
        self.delay, self.fail = delay, fail
        self.calls: list[int] = []

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec("x", "FP32", (-1, 2))]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec("y", "FP32", (-1, 2))]

    @property
    def metadata(self) -> dict[str, str]:
        return {}

    @property
    def batchable(self) -> bool:
        return True

    async def load(self) -> None:
        return None

    async def predict(
        self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        self.calls.append(len(feeds["x"]))
        await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("engine exploded")
        return {"y": feeds["x"] * 2}

    async def unload(self) -> None:
        return None


class InlineRuntime(FakeRuntime):
    """Computes on the event loop without yielding, as a fast ONNX model does."""

    @property
    def computes_inline(self) -> bool:
        return True

    async def predict(
        self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        return self.run_inline(feeds, output_names)[0]

    def run_inline(
        self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> tuple[dict[str, np.ndarray], int]:
        self.calls.append(len(feeds["x"]))
        if self.fail:
            raise RuntimeError("engine exploded")
        return {"y": feeds["x"] * 2}, 1000


def _batcher(runtime: FakeRuntime, **config) -> Batcher:
    return Batcher(runtime, ModelStats("fake", "1"), BatchingConfig(**config))


def _x(i: int, n: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.full((n, 2), i, np.float32)}


def test_concurrent_requests_share_one_call_and_get_their_own_rows():
    async def scenario():
        runtime = FakeRuntime()
        batcher = _batcher(runtime, max_batch_size=16, max_queue_delay_us=50_000)
        results = await asyncio.gather(*(batcher.infer(_x(i), 1) for i in range(10)))
        await batcher.close()
        return runtime, results, batcher.stats

    runtime, results, stats = asyncio.run(scenario())
    assert runtime.calls == [10]
    for i, (outputs, queue_ns) in enumerate(results):
        np.testing.assert_array_equal(outputs["y"], np.full((1, 2), 2 * i))
        assert queue_ns >= 0
    assert stats.execution_count == 1
    assert stats.inference_count == 10
    assert list(stats.batches) == [10]


def test_batches_respect_max_batch_size_and_preferred_sizes():
    async def scenario(**config):
        runtime = FakeRuntime(delay=0.01)
        batcher = _batcher(runtime, max_queue_delay_us=50_000, **config)
        await asyncio.gather(*(batcher.infer(_x(i, 2), 2) for i in range(7)))
        await batcher.close()
        return runtime.calls

    calls = asyncio.run(scenario(max_batch_size=4))
    assert max(calls) <= 4
    assert sum(calls) == 14
    calls = asyncio.run(scenario(max_batch_size=64, preferred_batch_sizes=(6,)))
    assert calls[0] == 6


def test_failed_batch_fails_every_request_and_the_next_batch_works():
    async def scenario():
        runtime = FakeRuntime(fail=True)
        batcher = _batcher(runtime, max_batch_size=8, max_queue_delay_us=20_000)
        results = await asyncio.gather(
            *(batcher.infer(_x(i), 1) for i in range(4)), return_exceptions=True
        )
        runtime.fail = False
        after = await batcher.infer(_x(5), 1)
        await batcher.close()
        return results, after

    results, after = asyncio.run(scenario())
    assert all(isinstance(r, InferenceFailedError) for r in results)
    assert "engine exploded" in str(results[0])
    np.testing.assert_array_equal(after[0]["y"], np.full((1, 2), 10))


def test_one_poisoned_request_does_not_fail_its_batch_mates():
    class Picky(FakeRuntime):
        async def predict(self, feeds, output_names=None):
            self.calls.append(len(feeds["x"]))
            if (feeds["x"] < 0).any():
                raise RuntimeError("negative input")
            return {"y": feeds["x"] * 2}

    async def scenario():
        runtime = Picky()
        batcher = _batcher(runtime, max_batch_size=8, max_queue_delay_us=20_000)
        results = await asyncio.gather(
            *(batcher.infer(_x(i if i != 2 else -1), 1) for i in range(4)),
            return_exceptions=True,
        )
        await batcher.close()
        return runtime.calls, results

    calls, results = asyncio.run(scenario())
    assert calls[0] == 4  # tried together first
    assert isinstance(results[2], InferenceFailedError)
    for i in (0, 1, 3):
        np.testing.assert_array_equal(results[i][0]["y"], np.full((1, 2), 2 * i))


def test_bounded_queue_refuses_with_queue_full():
    async def scenario():
        runtime = FakeRuntime(delay=0.05)
        batcher = _batcher(runtime, max_batch_size=2, max_queue_delay_us=0, max_queue_size=3)
        results = await asyncio.gather(
            *(batcher.infer(_x(i), 1) for i in range(8)), return_exceptions=True
        )
        await batcher.close()
        return results

    results = asyncio.run(scenario())
    refused = [r for r in results if isinstance(r, QueueFullError)]
    served = [r for r in results if isinstance(r, tuple)]
    assert refused and served
    assert "queue is full" in str(refused[0])


def test_requests_past_their_deadline_are_not_computed():
    async def scenario():
        runtime = FakeRuntime(delay=0.1)
        batcher = _batcher(runtime, max_batch_size=2, max_queue_delay_us=0)
        loop = asyncio.get_running_loop()
        first = asyncio.create_task(batcher.infer(_x(1, 2), 2))
        await asyncio.sleep(0.01)
        late = batcher.infer(_x(2), 1, deadline=loop.time() + 0.02)
        result = await asyncio.gather(first, late, return_exceptions=True)
        await batcher.close()
        return runtime.calls, result

    calls, (_first, late) = asyncio.run(scenario())
    assert isinstance(late, DeadlineExceededError)
    assert calls == [2]


def test_different_signatures_are_not_merged():
    async def scenario():
        runtime = FakeRuntime()
        batcher = _batcher(runtime, max_batch_size=16, max_queue_delay_us=20_000)
        a = {"x": np.ones((1, 2), np.float32)}
        await asyncio.gather(
            batcher.infer(a, 1, signature=("short",)),
            batcher.infer(a, 1, signature=("long",)),
            batcher.infer(a, 1, signature=("short",)),
        )
        await batcher.close()
        return runtime.calls

    assert sorted(asyncio.run(scenario())) == [1, 2]


def test_batched_equals_unbatched(server, model_repo):
    """32 concurrent mixed-size requests through the batching server == ORT one by one."""
    reference = OnnxModel(model_repo / "classifier" / "1" / "model.onnx", intra_op_threads=1)
    rng = np.random.default_rng(7)
    inputs = [rng.normal(size=(int(rng.integers(1, 4)), 4)).astype(np.float32) for _ in range(32)]
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        before = stub.ModelStatistics(pb.ModelStatisticsRequest(name="classifier"))
        with ThreadPoolExecutor(16) as pool:
            responses = list(
                pool.map(
                    lambda x: stub.ModelInfer(infer_request("classifier", {"input": x})), inputs
                )
            )
        after = stub.ModelStatistics(pb.ModelStatisticsRequest(name="classifier"))
    for x, response in zip(inputs, responses, strict=True):
        got = decode_outputs(response)["output"]
        want = reference.run({"input": x})["output"]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    executions = after.model_stats[0].execution_count - before.model_stats[0].execution_count
    assert executions < len(inputs), "concurrent requests should have been merged"


def test_queue_full_is_resource_exhausted_over_grpc(model_repo):
    thread = ServerThread(
        make_settings(model_repo, max_queue_size=2, max_queue_delay_us=300_000, max_batch_size=8)
    ).start()
    try:
        with grpc.insecure_channel(thread.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)

            def call(_):
                try:
                    stub.ModelInfer(good_request())
                    return grpc.StatusCode.OK
                except grpc.RpcError as exc:
                    return exc.code()

            with ThreadPoolExecutor(6) as pool:
                codes = list(pool.map(call, range(6)))
            assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
            assert grpc.StatusCode.OK in codes
            assert stub.ModelInfer(good_request()).outputs
    finally:
        thread.stop()


def test_requests_one_at_a_time_skip_the_queue_until_two_meet():
    async def scenario():
        runtime = InlineRuntime()
        batcher = _batcher(runtime, max_batch_size=16, max_queue_delay_us=0)
        for i in range(3):  # one caller: each request arrives after the last one finished
            outputs, queue_ns = await batcher.infer(_x(i), 1)
            np.testing.assert_array_equal(outputs["y"], np.full((1, 2), 2 * i))
            assert queue_ns == 0
            await asyncio.sleep(0.002)
        solo_calls = list(runtime.calls)
        # Ten callers at once: the first runs alone, and so does the second (one request right
        # after another may be a quick caller); the eight that waited meanwhile batch.
        results = await asyncio.gather(*(batcher.infer(_x(i), 1) for i in range(10)))
        burst_calls = runtime.calls[len(solo_calls) :]
        for i, (outputs, _) in enumerate(results):
            np.testing.assert_array_equal(outputs["y"], np.full((1, 2), 2 * i))
        # Back to one caller: after 16 batches of one request the queue is skipped again.
        for i in range(20):
            await asyncio.sleep(0.0005)
            await batcher.infer(_x(i), 1)
        await batcher.close()
        return solo_calls, burst_calls, batcher

    solo_calls, burst_calls, batcher = asyncio.run(scenario())
    assert solo_calls == [1, 1, 1]
    assert burst_calls == [1, 1, 8]
    assert batcher._solo
    assert batcher.stats.inference_count == 33


def test_now_route_takes_a_lone_request_and_never_one_that_would_wait(
    monkeypatch: pytest.MonkeyPatch,
):
    gap = 10**10  # 10 s: the test decides what "just finished" means, not the machine's speed
    monkeypatch.setattr(batching, "SOLO_GAP_NS", gap)

    async def scenario():
        runtime = InlineRuntime()
        batcher = _batcher(runtime, max_batch_size=16, max_queue_delay_us=0)
        batcher._solo_done_ns = time.perf_counter_ns() - 2 * gap  # nothing ran for a while
        assert batcher._runs_now()
        outputs, queue_ns = await batcher.infer(_x(3), 1)
        np.testing.assert_array_equal(outputs["y"], np.full((1, 2), 6))
        assert queue_ns == 0
        # Right after a request finished: one such request may be a quick caller, two in a row
        # are a burst and go to the queue.
        assert batcher._runs_now()
        assert not batcher._runs_now()
        batcher._solo_done_ns -= 2 * gap
        assert batcher._runs_now()  # a gap again: lone
        # Something queued: a new request waits its turn behind it.
        batcher._solo = False
        pending = asyncio.ensure_future(batcher.infer(_x(6), 1))
        await asyncio.sleep(0)
        assert not batcher._runs_now()
        await pending
        # A delay to honour (max_queue_delay_us > 0) or fast_paths off: the route is closed.
        assert not _batcher(InlineRuntime(), max_queue_delay_us=100)._may_run_now
        assert not _batcher(InlineRuntime(), max_queue_delay_us=0, fast_paths=False)._may_run_now
        # No batching at all: computed now too, and failures name the model.
        plain = _batcher(InlineRuntime(fail=True), enabled=False)
        with pytest.raises(InferenceFailedError, match="engine exploded"):
            await plain.infer(_x(1), 1)
        await batcher.close()
        await asyncio.sleep(0)  # the now route records its execution after the answer
        return batcher, runtime.calls

    batcher, calls = asyncio.run(scenario())
    assert calls == [1, 1]
    assert batcher.stats.execution_count == 2


def test_fast_paths_off_queues_even_a_lone_request():
    async def scenario():
        runtime = InlineRuntime()
        batcher = _batcher(runtime, max_batch_size=16, max_queue_delay_us=0, fast_paths=False)
        outputs, _ = await batcher.infer(_x(2), 1)
        np.testing.assert_array_equal(outputs["y"], np.full((1, 2), 4))
        queued = batcher._singles == 1  # only a batch run by the queue's consumer counts one
        await batcher.close()
        return queued, batcher.stats.execution_count

    queued, executions = asyncio.run(scenario())
    assert queued
    assert executions == 1
