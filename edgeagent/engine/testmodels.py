"""Small, valid .tflite models written from scratch, for tests, the demo and benchmarks.

They are built with the flatbuffer schema that ships inside ai-edge-litert
(`schema_py_generated`, object API) and run on the real interpreter. Tests need models they
control: normal ones (dense, conv; float or quantised input), and broken ones of each kind the
updater must catch: NaN outputs, an exception at invoke, a much slower model, a different input
shape, a model whose tensor arena is huge, and one that goes bad after a number of inferences
(state kept in a resource variable), which only probation can catch.
"""

from __future__ import annotations

import argparse
import zlib
from pathlib import Path
from typing import Sequence

import flatbuffers
import numpy as np

try:
    from ai_edge_litert import schema_py_generated as S
except ImportError as e:  # pragma: no cover - the test models need the LiteRT wheel
    raise ImportError("edgeagent.engine.testmodels needs ai-edge-litert (pip install ai-edge-litert)") from e

_DT = {"float32": S.TensorType.FLOAT32, "uint8": S.TensorType.UINT8, "int8": S.TensorType.INT8,
       "int32": S.TensorType.INT32, "bool": S.TensorType.BOOL, "resource": S.TensorType.RESOURCE}
_NP = {"float32": np.float32, "uint8": np.uint8, "int8": np.int8, "int32": np.int32}


class _Graph:
    """Accumulates tensors, buffers and operators of one subgraph."""

    def __init__(self, model: "_ModelBuilder") -> None:
        self.m = model
        self.tensors: list = []
        self.ops: list = []
        self.inputs: list[int] = []
        self.outputs: list[int] = []

    def tensor(self, name: str, shape: Sequence[int], dtype: str = "float32", data: np.ndarray | None = None,
               scale: float | None = None, zero_point: int = 0) -> int:
        t = S.TensorT()
        t.name = name.encode()
        t.shape = list(shape)
        t.type = _DT[dtype]
        t.buffer = self.m.buffer(data)
        if scale is not None:
            q = S.QuantizationParametersT()
            q.scale = [float(scale)]
            q.zeroPoint = [int(zero_point)]
            t.quantization = q
        self.tensors.append(t)
        return len(self.tensors) - 1

    def const(self, name: str, arr: np.ndarray) -> int:
        arr = np.array(arr, order="C")  # (ascontiguousarray would turn a scalar into shape [1])
        return self.tensor(name, arr.shape, arr.dtype.name, arr)

    def op(self, code: int, inputs: list[int], outputs: list[int], opt_type: int = 0, opts: object = None) -> None:
        o = S.OperatorT()
        o.opcodeIndex = self.m.opcode(code)
        o.inputs = inputs
        o.outputs = outputs
        if opts is not None:
            o.builtinOptionsType = opt_type
            o.builtinOptions = opts
        self.ops.append(o)

    def build(self, name: str):
        g = S.SubGraphT()
        g.tensors, g.operators, g.inputs, g.outputs = self.tensors, self.ops, self.inputs, self.outputs
        g.name = name.encode()
        return g


class _ModelBuilder:
    def __init__(self) -> None:
        self.buffers = [S.BufferT()]  # buffer 0: the empty sentinel
        self.opcodes: list[int] = []

    def buffer(self, data: np.ndarray | None) -> int:
        if data is None:
            return 0
        b = S.BufferT()
        b.data = np.frombuffer(np.array(data, order="C").tobytes(), dtype=np.uint8)
        self.buffers.append(b)
        return len(self.buffers) - 1

    def opcode(self, code: int) -> int:
        if code not in self.opcodes:
            self.opcodes.append(code)
        return self.opcodes.index(code)

    def finish(self, graphs: list) -> bytes:
        m = S.ModelT()
        m.version = 3
        m.description = b"edgeagent test model"
        codes = []
        for c in self.opcodes:
            oc = S.OperatorCodeT()
            oc.builtinCode = c
            oc.deprecatedBuiltinCode = min(c, 127)
            oc.version = 1
            codes.append(oc)
        m.operatorCodes = codes
        m.subgraphs = graphs
        m.buffers = self.buffers
        b = flatbuffers.Builder(1024)
        b.Finish(m.Pack(b), file_identifier=b"TFL3")
        return bytes(b.Output())


def _fc(g: _Graph, x: int, n_in: int, n_out: int, rng: np.random.Generator, name: str, relu: bool = False,
        bias_shift: float = 0.0, nan: bool = False, tune: float = 0.0) -> int:
    w = (rng.standard_normal((n_out, n_in)) / np.sqrt(max(n_in, 1))).astype(np.float32)
    if tune:  # a fine-tune: every weight nudged (its own generator: the base's weights stay the base's)
        w += (np.random.default_rng(zlib.crc32(name.encode())).standard_normal(w.shape) * tune).astype(np.float32)
    b = (rng.standard_normal(n_out) * 0.1 + bias_shift).astype(np.float32)
    if nan:
        b[0] = np.nan
    wt, bt = g.const(f"{name}/w", w), g.const(f"{name}/b", b)
    out = g.tensor(f"{name}/out", [1, n_out])
    opts = S.FullyConnectedOptionsT()
    opts.fusedActivationFunction = S.ActivationFunctionType.RELU if relu else S.ActivationFunctionType.NONE
    g.op(S.BuiltinOperator.FULLY_CONNECTED, [x, wt, bt], [out], S.BuiltinOptions.FullyConnectedOptions, opts)
    return out


def _input(g: _Graph, shape: tuple[int, ...], dtype: str) -> int:
    """The input tensor, dequantised to float32 when the model takes uint8/int8."""
    if dtype == "float32":
        x = g.tensor("input", shape)
        g.inputs = [x]
        return x
    zp = 0 if dtype == "uint8" else -128
    q = g.tensor("input", shape, dtype, scale=1.0 / 255.0, zero_point=zp)
    g.inputs = [q]
    x = g.tensor("input/dequantized", shape)
    g.op(S.BuiltinOperator.DEQUANTIZE, [q], [x])
    return x


def _flatten(g: _Graph, x: int, shape: tuple[int, ...]) -> tuple[int, int]:
    n = int(np.prod(shape[1:]))
    if len(shape) == 2:
        return x, n
    out = g.tensor("flat", [1, n])
    opts = S.ReshapeOptionsT()
    opts.newShape = [1, n]
    g.op(S.BuiltinOperator.RESHAPE, [x, g.const("flat/shape", np.array([1, n], np.int32))], [out],
         S.BuiltinOptions.ReshapeOptions, opts)
    return out, n


def _conv_features(g: _Graph, x: int, shape: tuple[int, ...], rng: np.random.Generator, filters: int = 8) -> tuple[int, int]:
    _, h, w, c = shape
    k = (rng.standard_normal((filters, 3, 3, c)) * 0.2).astype(np.float32)
    kb = np.zeros(filters, np.float32)
    oh, ow = (h + 1) // 2, (w + 1) // 2
    conv = g.tensor("conv/out", [1, oh, ow, filters])
    opts = S.Conv2DOptionsT()
    opts.padding = S.Padding.SAME
    opts.strideW = opts.strideH = 2
    opts.dilationWFactor = opts.dilationHFactor = 1
    opts.fusedActivationFunction = S.ActivationFunctionType.RELU
    g.op(S.BuiltinOperator.CONV_2D, [x, g.const("conv/k", k), g.const("conv/b", kb)], [conv],
         S.BuiltinOptions.Conv2DOptions, opts)
    pooled = g.tensor("mean/out", [1, filters])
    mo = S.ReducerOptionsT()
    mo.keepDims = False
    g.op(S.BuiltinOperator.MEAN, [conv, g.const("mean/axes", np.array([1, 2], np.int32))], [pooled],
         S.BuiltinOptions.ReducerOptions, mo)
    return pooled, filters


def _counter(mb: _ModelBuilder, g: _Graph) -> int:
    """The number of invokes so far, including this one (float32 [1]).

    The count lives in a resource variable initialised once by a CALL_ONCE subgraph (index 1),
    like the state of a real stateful (RNN) model that drifts in service.
    """
    init = _Graph(mb)
    h0 = init.tensor("counter/handle", [], "resource")
    vo = S.VarHandleOptionsT()
    vo.sharedName = b"edgeagent_counter"
    init.op(S.BuiltinOperator.VAR_HANDLE, [], [h0], S.BuiltinOptions.VarHandleOptions, vo)
    init.op(S.BuiltinOperator.ASSIGN_VARIABLE, [h0, init.const("counter/zero", np.zeros([1], np.float32))], [])
    once = S.CallOnceOptionsT()
    once.initSubgraphIndex = 1
    g.op(S.BuiltinOperator.CALL_ONCE, [], [], S.BuiltinOptions.CallOnceOptions, once)
    h = g.tensor("counter/handle", [], "resource")
    g.op(S.BuiltinOperator.VAR_HANDLE, [], [h], S.BuiltinOptions.VarHandleOptions, vo)
    cur = g.tensor("counter/value", [1])
    g.op(S.BuiltinOperator.READ_VARIABLE, [h], [cur])
    nxt = g.tensor("counter/next", [1])
    g.op(S.BuiltinOperator.ADD, [cur, g.const("counter/one", np.ones([1], np.float32))], [nxt],
         S.BuiltinOptions.AddOptions, S.AddOptionsT())
    g.op(S.BuiltinOperator.ASSIGN_VARIABLE, [h, nxt], [])
    mb._init_graph = init  # type: ignore[attr-defined]
    return nxt


def _counter_guard(mb: _ModelBuilder, g: _Graph, y: int, n_out: int, after: int) -> int:
    """y + log(after - count): finite for the first `after` invokes, NaN afterwards."""
    nxt = _counter(mb, g)
    left = g.tensor("counter/left", [1])
    g.op(S.BuiltinOperator.SUB, [g.const("counter/limit", np.array([after + 0.5], np.float32)), nxt], [left],
         S.BuiltinOptions.SubOptions, S.SubOptionsT())
    guard = g.tensor("counter/log", [1])
    g.op(S.BuiltinOperator.LOG, [left], [guard])
    out = g.tensor("output", [1, n_out])
    g.op(S.BuiltinOperator.ADD, [y, guard], [out], S.BuiltinOptions.AddOptions, S.AddOptionsT())
    return out


def _busy_loop(mb: _ModelBuilder, g: _Graph, iterations: int, after: int = 0) -> int:
    """A WHILE loop of `iterations` steps: an invoke that hangs for minutes. With `after`, the
    loop runs 0 steps for the first `after` invokes and `iterations` from then on (a model that
    works, then spins inside invoke)."""
    if after:
        nxt = _counter(mb, g)
        past = g.tensor("hang/past", [1], "bool")
        g.op(S.BuiltinOperator.GREATER, [nxt, g.const("hang/after", np.array([after + 0.5], np.float32))], [past])
        past_i = g.tensor("hang/past_i", [1], "int32")
        co = S.CastOptionsT()
        co.inDataType, co.outDataType = S.TensorType.BOOL, S.TensorType.INT32
        g.op(S.BuiltinOperator.CAST, [past], [past_i], S.BuiltinOptions.CastOptions, co)
        limit = g.tensor("hang/limit", [1], "int32")
        g.op(S.BuiltinOperator.MUL, [past_i, g.const("hang/n", np.array([iterations], np.int32))], [limit],
             S.BuiltinOptions.MulOptions, S.MulOptionsT())
    else:
        limit = g.const("hang/limit", np.array([iterations], np.int32))
    first = 2 if after else 1  # subgraph 1 is the counter's init when there is one
    cond, body = _Graph(mb), _Graph(mb)
    ci, cn = cond.tensor("i", [1], "int32"), cond.tensor("n", [1], "int32")
    cond.inputs = [ci, cn]
    co2 = cond.tensor("go", [1], "bool")
    cond.op(S.BuiltinOperator.LESS, [ci, cn], [co2])
    cond.outputs = [co2]
    bi, bn = body.tensor("i", [1], "int32"), body.tensor("n", [1], "int32")
    body.inputs = [bi, bn]
    bo = body.tensor("i_next", [1], "int32")
    body.op(S.BuiltinOperator.ADD, [bi, body.const("one", np.array([1], np.int32))], [bo],
            S.BuiltinOptions.AddOptions, S.AddOptionsT())
    body.outputs = [bo, bn]
    mb._extra_graphs = [cond, body]  # type: ignore[attr-defined]
    out, out_n = g.tensor("while/out", [1], "int32"), g.tensor("while/n", [1], "int32")
    wo = S.WhileOptionsT()
    wo.condSubgraphIndex, wo.bodySubgraphIndex = first, first + 1
    g.op(S.BuiltinOperator.WHILE, [g.const("while/start", np.zeros([1], np.int32)), limit], [out, out_n],
         S.BuiltinOptions.WhileOptions, wo)
    return out


def build_model(
    *,
    kind: str = "dense",
    input_shape: Sequence[int] = (1, 8),
    input_dtype: str = "float32",
    outputs: int = 4,
    seed: int = 0,
    nan: bool = False,
    slow: int = 0,
    fail_at_invoke: bool = False,
    huge: bool = False,
    version_tag: int = 0,
    nan_after: int = 0,
    filters: int = 8,
    hang: bool = False,
    hang_after: int = 0,
    spin: int = 0,
    insert_layer: int = -1,
    finetune: float = 0.0,
) -> bytes:
    """The bytes of a .tflite model; see write_model."""
    shape = tuple(int(d) for d in input_shape)
    rng = np.random.default_rng(seed)
    mb = _ModelBuilder()
    g = _Graph(mb)
    x = _input(g, shape, input_dtype)
    if kind == "conv":
        if len(shape) != 4:
            raise ValueError("conv models take an NHWC input_shape")
        feat, n = _conv_features(g, x, shape, rng, filters)
    elif kind == "dense":
        feat, n = _flatten(g, x, shape)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    if slow:
        # a chain of wide layers: each adds ~2 M multiply-adds
        h = _fc(g, feat, n, 1024, rng, "slow/in", relu=True, tune=finetune)
        for i in range(4 * slow):
            if i == insert_layer:  # a re-export with one more layer: every later buffer moves
                h = _fc(g, h, 1024, 1024, np.random.default_rng(seed + 7919), "slow/inserted", relu=True)
            h = _fc(g, h, 1024, 1024, rng, f"slow/{i}", relu=True, tune=finetune)
        feat, n = h, 1024
    if huge:
        # FILL a 1 x 2^30 float tensor: a 4 GiB arena for a file of a few hundred bytes
        big = g.tensor("huge/out", [1, 1 << 30])
        g.op(S.BuiltinOperator.FILL, [g.const("huge/shape", np.array([1, 1 << 30], np.int32)),
                                      g.const("huge/one", np.ones([], np.float32))], [big])
        s = g.tensor("huge/sum", [1, 1])
        mo = S.ReducerOptionsT()
        mo.keepDims = True
        g.op(S.BuiltinOperator.SUM, [big, g.const("huge/axes", np.array([1], np.int32))], [s],
             S.BuiltinOptions.ReducerOptions, mo)
        feat2 = g.tensor("huge/feat", [1, n])
        g.op(S.BuiltinOperator.ADD, [feat, s], [feat2], S.BuiltinOptions.AddOptions, S.AddOptionsT())
        feat = feat2
    if fail_at_invoke:
        # GATHER with an index past the end: the kernel checks indices at eval time
        gathered = g.tensor("gather/out", [1, 1])
        go = S.GatherOptionsT()
        go.axis = 1
        g.op(S.BuiltinOperator.GATHER, [feat, g.const("gather/idx", np.array([n + 1000], np.int32))], [gathered],
             S.BuiltinOptions.GatherOptions, go)
        feat2 = g.tensor("gather/feat", [1, n])
        g.op(S.BuiltinOperator.ADD, [feat, gathered], [feat2], S.BuiltinOptions.AddOptions, S.AddOptionsT())
        feat = feat2
    if hang or hang_after or spin:
        if nan_after:
            raise ValueError("hang/spin and nan_after cannot be combined")
        _busy_loop(mb, g, spin or 2_000_000_000, after=hang_after)
    y = _fc(g, feat, n, outputs, rng, "head", bias_shift=version_tag * 1e-3, nan=nan)
    if nan_after:
        y = _counter_guard(mb, g, y, outputs, nan_after)
    else:
        g.tensors[y].name = b"output"
    g.outputs = [y]
    graphs = [g.build("main")]
    init = getattr(mb, "_init_graph", None)
    if init is not None:
        graphs.append(init.build("init"))
    for i, extra in enumerate(getattr(mb, "_extra_graphs", [])):
        graphs.append(extra.build(f"while{i}"))
    return mb.finish(graphs)


def write_model(path: str | Path, **kw) -> Path:
    """Write a model; keyword arguments as build_model.

    kind: "dense" (FULLY_CONNECTED) or "conv" (CONV_2D 3x3/2 + MEAN + FULLY_CONNECTED, NHWC input);
    input_dtype: "float32", or "uint8"/"int8" with scale 1/255 (a DEQUANTIZE first);
    nan: NaN outputs for every input; slow=N: 4N extra 1024x1024 layers (N=1 is ~100x slower
    than a small dense model); fail_at_invoke: loads and allocates, raises at invoke;
    insert_layer=I (with slow): one more 1024x1024 layer before slow layer I, a re-export whose later
    buffers all move; finetune=E: every slow weight nudged by E x N(0,1);
    huge: needs a 4 GiB arena at allocate_tensors; version_tag: shifts the head's bias by
    tag/1000, so versions differ in a few bytes; nan_after=K: finite for K invokes, NaN after;
    filters: conv output channels; hang: a WHILE loop of 2e9 steps inside invoke (a hung model);
    hang_after=K: works for K invokes, then hangs inside every invoke (a model that hangs in service);
    spin=N: a WHILE loop of N steps in every invoke (a slow model of a chosen speed and a tiny file,
    ~10 M steps per second).
    """
    p = Path(path)
    p.write_bytes(build_model(**kw))
    return p


def finetune(src: bytes, *, last_n_buffers: int = 2, seed: int = 0, scale: float = 0.01) -> bytes:
    """A copy of a real model with the float weights (float32 or float16) of its last N weighted
    layers perturbed, in operator order, like a fine-tune of the head. Same size and structure,
    still a valid model. last_n_buffers=0 perturbs every layer (a full retrain)."""
    m = S.ModelT.InitFromObj(S.Model.GetRootAs(src, 0))
    rng = np.random.default_rng(seed)
    kinds = {S.TensorType.FLOAT32: np.float32, S.TensorType.FLOAT16: np.float16}
    layers: list[list[tuple[int, type]]] = []  # per operator: the weight buffers it reads
    sg = m.subgraphs[0]
    for op in sg.operators:
        bufs = []
        for t in op.inputs if op.inputs is not None else []:
            if t < 0:
                continue
            ten = sg.tensors[t]
            data = m.buffers[ten.buffer].data if ten.buffer else None
            if ten.type in kinds and data is not None and len(data) >= 64:
                bufs.append((ten.buffer, kinds[ten.type]))
        if bufs:
            layers.append(bufs)
    chosen = layers if last_n_buffers == 0 else layers[-last_n_buffers:]
    seen = set()
    for bufs in chosen:
        for b, dt in bufs:
            if b in seen:
                continue
            seen.add(b)
            arr = np.frombuffer(bytes(m.buffers[b].data), dt).astype(np.float32)
            arr += rng.standard_normal(arr.shape).astype(np.float32) * scale * (float(np.abs(arr).mean()) + 1e-6)
            m.buffers[b].data = np.frombuffer(arr.astype(dt).tobytes(), np.uint8)
    b = flatbuffers.Builder(len(src) + 1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgeagent.engine.testmodels", description="write a small test .tflite model")
    ap.add_argument("out")
    ap.add_argument("--kind", choices=("dense", "conv"), default="dense")
    ap.add_argument("--input-shape", default="1,16", help="comma separated, e.g. 1,64,64,3")
    ap.add_argument("--input-dtype", choices=("float32", "uint8", "int8"), default="float32")
    ap.add_argument("--outputs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--version-tag", type=int, default=0)
    ap.add_argument("--nan", action="store_true")
    ap.add_argument("--nan-after", type=int, default=0)
    ap.add_argument("--slow", type=int, default=0)
    ap.add_argument("--spin", type=int, default=0)
    ap.add_argument("--hang-after", type=int, default=0)
    a = ap.parse_args(argv)
    p = write_model(a.out, kind=a.kind, input_shape=tuple(int(x) for x in a.input_shape.split(",")),
                    input_dtype=a.input_dtype, outputs=a.outputs, seed=a.seed, version_tag=a.version_tag,
                    nan=a.nan, nan_after=a.nan_after, slow=a.slow, hang_after=a.hang_after, spin=a.spin)
    print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
