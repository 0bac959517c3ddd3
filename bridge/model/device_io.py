"""What crosses between the host and the device around a bound model call, and no more.

In: advance a batch of bound model windows on the device, so only the new samples cross.
Out: the model's outputs copied into host arrays made once, inside a run.

A hop of ``B`` performers in step moves every window by the same ``k`` new samples (533
or 534 at 30 fps).  Gathering ``B`` whole windows and copying them to the device every hop
is 64 KB per performer-second of window twice over (16 MB for 256 one-second windows): on
the GPU host that is milliseconds of the hop thread for a model call of 29 ms.  Instead the
device keeps the last windows (:class:`WindowShift`): a tiny ONNX graph, run on the model's
device with bound buffers, writes ``concat(previous[:, k:], new)`` into the model's bound
input and into a second buffer that becomes the next "previous" (two buffers in turn: a
kernel never reads the buffer it writes).  Only ``[B, k]`` samples go to the device.

The caller says when the windows continue the last call's (the same performers, in the
same rows); anything else (a first call, another batch, performers dropping out) uploads
the whole windows, into the model's input and the shift's state alike.

Out (:class:`OutputFetch`): ``OrtValue.numpy()`` makes a fresh host array under the
interpreter lock every call (3 MB a hop for 256 performers' frames and CTC logits, each
page touched anew).  An identity graph whose outputs are bound to host arrays made once
has ONNX Runtime copy them during a run, with the lock released.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def shift_model_bytes() -> bytes:
    """The graph ``(previous [B, W], new [B, K]) -> (window [B, W], state [B, W])``, both
    ``concat(previous[:, K:], new)``: built with ``onnx`` when a runner binds its buffers."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Shape", ["new"], ["new_shape"]),
        helper.make_node("Gather", ["new_shape", "one"], ["k"], axis=0),
        helper.make_node("Slice", ["previous", "k", "big", "one"], ["kept"]),
        helper.make_node("Concat", ["kept", "new"], ["window"], axis=1),
        helper.make_node("Identity", ["window"], ["state"]),
    ]
    inits = [
        helper.make_tensor("one", TensorProto.INT64, [1], [1]),
        helper.make_tensor("big", TensorProto.INT64, [1], [2**62]),
    ]
    graph = helper.make_graph(
        nodes, "a2e_window_shift",
        [helper.make_tensor_value_info("previous", TensorProto.FLOAT, ["B", "W"]),
         helper.make_tensor_value_info("new", TensorProto.FLOAT, ["B", "K"])],
        [helper.make_tensor_value_info("window", TensorProto.FLOAT, ["B", "W"]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, ["B", "W"])],
        inits,
    )  # fmt: skip
    return _serialized(graph)


class WindowShift:
    """The device-side windows of one batch size: two state buffers, the model's input."""

    def __init__(self, session: Any, audio: Any, batch: int, window: int, device: str) -> None:
        import onnxruntime as ort

        self.batch = batch
        self.window = window
        self._session = session
        self._audio = audio  #: the model's bound input OrtValue [batch, window]
        shape = [batch, window]
        self._states = [ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, device, 0)
                        for _ in range(2)]  # fmt: skip
        self._current = 0  #: which state holds the windows the model last ran on
        self._scratch = np.zeros(batch * window, np.float32)  #: the new samples, contiguous
        self._bindings = []
        for i in range(2):  # binding i: state i -> (model input, state 1 - i)
            b = session.io_binding()
            b.bind_ortvalue_input("previous", self._states[i])
            b.bind_ortvalue_output("window", audio)
            b.bind_ortvalue_output("state", self._states[1 - i])
            self._bindings.append(b)

    def load(self, windows: np.ndarray) -> None:
        """Whole windows ``[batch, W]`` (already padded): into the model's input and the state."""
        self._audio.update_inplace(windows)
        self._states[self._current].update_inplace(windows)

    def advance(self, new: np.ndarray) -> None:
        """Every window moves on by ``new``'s ``k`` samples (``[n, k]``, n <= batch; padding
        rows get zeros): the model's input becomes the next windows."""
        n, k = new.shape
        if not 0 < k <= self.window:
            raise ValueError(f"a window can advance by 1..{self.window} samples, not {k}")
        fresh = self._scratch[: self.batch * k].reshape(self.batch, k)
        fresh[:n] = new
        fresh[n:] = 0.0
        binding = self._bindings[self._current]
        binding.bind_cpu_input("new", fresh)
        self._session.run_with_iobinding(binding)
        binding.synchronize_outputs()  # the model's own session reads the input next
        self._current = 1 - self._current


def fetch_model_bytes(outputs: int) -> bytes:
    """The graph ``x0.. -> y0..``, each ``y`` an identity of its ``x`` (float32, rank 3)."""
    from onnx import TensorProto, helper

    def value(name: str, i: int) -> Any:
        return helper.make_tensor_value_info(f"{name}{i}", TensorProto.FLOAT, ["B", f"T{i}", f"C{i}"])

    graph = helper.make_graph(
        [helper.make_node("Identity", [f"x{i}"], [f"y{i}"]) for i in range(outputs)], "a2e_fetch",
        [value("x", i) for i in range(outputs)], [value("y", i) for i in range(outputs)],
    )  # fmt: skip
    return _serialized(graph)


def _serialized(graph: Any) -> bytes:
    """``graph`` as a checked model (opset 17, IR 8: what ONNX Runtime 1.17+ reads)."""
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


class OutputFetch:
    """A bound call's device outputs, copied into host arrays made once (``arrays``)."""

    def __init__(self, session: Any, outputs: list[Any], shapes: list[tuple[int, ...]]) -> None:
        import onnxruntime as ort

        self._session = session
        self.arrays = [np.zeros(shape, np.float32) for shape in shapes]
        self._binding = session.io_binding()
        for i, (value, array) in enumerate(zip(outputs, self.arrays, strict=True)):
            self._binding.bind_ortvalue_input(f"x{i}", value)
            # an OrtValue over the array's own memory: ORT writes the host array itself
            self._binding.bind_ortvalue_output(f"y{i}", ort.OrtValue.ortvalue_from_numpy(array))

    def run(self) -> list[np.ndarray]:
        """Copy the outputs now; the arrays are overwritten by the next call."""
        self._session.run_with_iobinding(self._binding)
        return self.arrays


def helper_session(model: bytes, providers: list[Any]) -> Any:
    """An ONNX Runtime session of one of these small graphs on the model's providers."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model, opts, providers=providers)
