import AttentionTensor

/// The one gate every variant's forward (and backward) passes through: shapes, the thread
/// count, the scale, the mask and its bias, the NaN/Inf scan (which also measures the largest
/// magnitudes), and the pointer and stride setup of ``AttentionLayout``. A variant builds one of
/// these, checks the overflow bound that fits its maths, and runs its kernel inside
/// ``withLayout(output:queryOffset:_:)``.
struct AttentionInputs {
    let shape: AttentionShape
    /// Inputs with the last axis contiguous (views are kept: only the strides are read).
    let queries: Tensor, keys: Tensor, values: Tensor
    let scale: Float
    let mask: AttentionMask
    let bias: BroadcastBias?
    let threads: Int
    /// Largest finite magnitudes of q, k, v and the bias (from the scan, or given by a caller that
    /// scanned already: a KV cache at append time, Infini's whole sequence).
    let maxQ: Float, maxK: Float, maxV: Float, maxBias: Float

    /// Which inputs still need the NaN/Inf scan.
    enum Scan {
        /// Scan queries, keys and values.
        case all
        /// Scan the queries; keys and values were scanned earlier with these magnitudes.
        case queries(maxK: Float, maxV: Float)
        /// Scanned already, with these magnitudes.
        case none(maxQ: Float, maxK: Float, maxV: Float)
    }

    init(queries: Tensor, keys: Tensor, values: Tensor, scale: Float? = nil, mask: AttentionMask = .none,
         threads: Int? = nil, scan: Scan = .all, shapeOverride: AttentionShape? = nil, maskOverride: AttentionMask? = nil) throws {
        let shape = try shapeOverride ?? AttentionShape(queries: queries, keys: keys, values: values)
        let mask = maskOverride ?? mask
        if let threads, threads < 1 { throw AttentionError.invalidArgument(name: "threads", value: "\(threads)", expected: "at least 1") }
        let scale = scale ?? 1 / Float(shape.d).squareRoot()
        guard scale.isFinite else { throw AttentionError.invalidArgument(name: "scale", value: "\(scale)", expected: "a finite number") }
        let (bias, maxBias) = try mask.validated(for: shape)
        func scanned(_ name: String, _ t: Tensor) throws -> Float {
            let r = t.scanValues()
            if let i = r.invalidIndex { throw AttentionError.nonFinite(name: name, index: i) }
            return r.maxMagnitude
        }
        switch scan {
        case .all:
            (maxQ, maxK, maxV) = (try scanned("queries", queries), try scanned("keys", keys), try scanned("values", values))
        case .queries(let k, let v):
            (maxQ, maxK, maxV) = (try scanned("queries", queries), k, v)
        case .none(let q, let k, let v):
            (maxQ, maxK, maxV) = (q, k, v)
        }
        self.shape = shape
        self.queries = queries.lastAxisContiguous()
        self.keys = keys.lastAxisContiguous()
        self.values = values.lastAxisContiguous()
        self.scale = scale
        self.mask = mask
        self.bias = bias
        self.maxBias = maxBias
        self.threads = threads ?? Parallel.defaultThreads
    }

    /// Keys and values in a low-precision cache (then `keys` and `values` are placeholders).
    private(set) var stored: StoredKV? = nil
    /// Keys and values in a ring buffer (a sliding-window cache layer): see ``AttentionLayout/ring``.
    var ring: (start: Int, slots: Int)? = nil

    /// Queries against keys and values stored in a ``KVCache`` of a low-precision type, scanned
    /// when appended (largest magnitudes `maxK`, `maxV`): `keys`/`values` are 1-element
    /// placeholders and the layout carries the stored rows.
    init(queries: Tensor, stored: StoredKV, shape: AttentionShape, scale: Float?, mask: AttentionMask, threads: Int?,
         maxK: Float, maxV: Float) throws {
        let placeholder = try Tensor(zeros: [1, 1, 1, 1])
        try self.init(queries: queries, keys: placeholder, values: placeholder, scale: scale, mask: .none, threads: threads,
                      scan: .queries(maxK: maxK, maxV: maxV), shapeOverride: shape, maskOverride: mask)
        self.stored = stored
    }

    private init(_ base: AttentionInputs, queries: Tensor, keys: Tensor, values: Tensor, mask: AttentionMask) throws {
        shape = try AttentionShape(queries: queries, keys: keys, values: values)
        self.queries = queries
        self.keys = keys
        self.values = values
        self.mask = mask
        bias = nil
        (scale, threads, maxQ, maxK, maxV, maxBias) = (base.scale, base.threads, base.maxQ, base.maxK, base.maxV, 0)
    }

    /// The same problem restricted to query rows `rows` and key rows `keyRows` (views, not
    /// copies), with `mask` (no bias), already validated: BigBird's global rows.
    func restricted(rows: Range<Int>, keyRows: Range<Int>, mask: AttentionMask) throws -> AttentionInputs {
        try AttentionInputs(self, queries: try queries.rows(rows), keys: try keys.rows(keyRows),
                            values: try values.rows(keyRows), mask: mask)
    }

    /// Float32 intermediates stay below this (2^124): a few doublings of headroom under the
    /// largest float (2^128) for the sums and differences the kernels form.
    static let magnitudeLimit = Double(sign: .plus, exponent: 124, significand: 1)

    /// Softmax attention: every score obeys |scale·q·k + bias| <= |scale|·d·max|q|·max|k| + max|bias|
    /// (plus ALiBi's largest penalty), and the unnormalised output of the online softmax is at
    /// most M·max|v| (every p <= 1). Throws ``AttentionError/overflow(quantity:bound:limit:)`` when either bound
    /// exceeds ``magnitudeLimit`` (e.g. q = k = 1e19); typical inputs are 30 orders of magnitude below.
    func checkSoftmaxRange() throws {
        let s = shape
        var scores = Double(abs(scale)) * Double(s.d) * Double(maxQ) * Double(maxK) + Double(maxBias)
        if let alibi = mask.alibi {
            scores += Double(alibi.slopes.map { abs($0) }.max() ?? 0) * Double(max(s.N, s.M))
        }
        if scores > Self.magnitudeLimit {
            throw AttentionError.overflow(quantity: "the scores |scale|·d·max|q|·max|k| + max|bias|", bound: scores, limit: Self.magnitudeLimit)
        }
        let outputs = Double(s.M) * Double(maxV)
        if outputs > Self.magnitudeLimit {
            throw AttentionError.overflow(quantity: "the accumulated outputs M·max|v|", bound: outputs, limit: Self.magnitudeLimit)
        }
    }

    /// The output tensor, `[B, H, N, dv]` or token-major `[B, N, H, dv]` (allocated through the memory budget).
    func makeOutput(_ layout: AttentionOutputLayout = .headMajor) throws -> Tensor {
        try Tensor(uninitialized: layout.outputShape(shape))
    }

    /// Runs `body` with the raw layout of these inputs and `out` (contiguous, `[B, H, N, dv]` or
    /// token-major `[B, N, H, dv]`). `queryOffset` places query row 0 at that key position (nil:
    /// bottom-right, `M - N`).
    func withLayout<R>(output out: inout Tensor, queryOffset: Int? = nil, outputLayout: AttentionOutputLayout = .headMajor,
                       _ body: (AttentionLayout) throws -> R) rethrows -> R {
        precondition(out.shape == outputLayout.outputShape(shape), "output shape")
        return try out.withUnsafeMutableBufferPointer { o in
            try withLayout(outputPointer: o.baseAddress!, queryOffset: queryOffset, outputLayout: outputLayout, body)
        }
    }

    /// The layout with a raw output pointer (a backward pass, which reads the inputs and writes
    /// gradients, passes its own buffer: nothing writes through `out` there).
    func withLayout<R>(outputPointer o: UnsafeMutablePointer<Float>, queryOffset: Int? = nil,
                       outputLayout: AttentionOutputLayout = .headMajor,
                       _ body: (AttentionLayout) throws -> R) rethrows -> R {
        let (q, k, v, s) = (queries, keys, values, shape)
        let causal = mask.isCausal, lengths = mask.keyLengths, scale = scale
        return try q.withUnsafePointer { pq in
            try k.withUnsafePointer { pk in
                try v.withUnsafePointer { pv in
                    try withOptionalPointer(bias?.tensor) { pb in
                        try withOptionalArray(mask.alibi?.slopes) { pa in
                            var layout = AttentionLayout(
                                B: s.B, H: s.H, Hkv: s.Hkv, N: s.N, M: s.M, d: s.d, dv: s.dv,
                                q: pq, qStride: (q.strides[0], q.strides[1], q.strides[2]),
                                k: pk, kStride: (k.strides[0], k.strides[1], k.strides[2]),
                                v: pv, vStride: (v.strides[0], v.strides[1], v.strides[2]),
                                out: o, scale: scale, causal: causal, keyLengths: lengths,
                                bias: pb, biasStride: bias?.strides ?? (0, 0, 0))
                            layout.alibi = pa
                            layout.queryOffsetOverride = queryOffset
                            layout.stored = stored
                            layout.window = mask.slidingWindow
                            layout.ring = ring
                            if outputLayout == .tokenMajor { layout.outStrideOverride = (s.N * s.H * s.dv, s.dv, s.H * s.dv) }
                            return try body(layout)
                        }
                    }
                }
            }
        }
    }
}

func withOptionalArray<R>(_ a: [Float]?, _ body: (UnsafePointer<Float>?) throws -> R) rethrows -> R {
    guard let a else { return try body(nil) }
    return try a.withUnsafeBufferPointer { try body($0.baseAddress) }
}

func withOptionalPointer<R>(_ t: Tensor?, _ body: (UnsafePointer<Float>?) throws -> R) rethrows -> R {
    guard let t else { return try body(nil) }
    return try t.withUnsafePointer { try body($0) }
}
