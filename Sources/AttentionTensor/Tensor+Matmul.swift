/// Matrix products straight onto `cblas_sgemm`.
extension Tensor {
    /// How a rank ≥ 2 tensor's last two axes map onto a BLAS operand, if they do without a copy.
    struct MatrixOperand {
        var transpose: BLAS.Transpose
        var ld: Int
    }

    /// `(rows, cols)` with strides `(ld, 1)` is a plain operand; `(1, ld)` is a transposed one.
    func matrixOperand() -> MatrixOperand? {
        let r = shape[rank - 2], c = shape[rank - 1]
        let rs = strides[rank - 2], cs = strides[rank - 1]
        if cs == 1 || c == 1 {
            let ld = r == 1 ? max(c, 1) : rs
            if ld >= max(c, 1) { return MatrixOperand(transpose: .none, ld: ld) }
        }
        if rs == 1 || r == 1 {
            let ld = c == 1 ? max(r, 1) : cs
            if ld >= max(r, 1) { return MatrixOperand(transpose: .transpose, ld: ld) }
        }
        return nil
    }

    /// Leading axes padded on the left to `batchRank` (size 1, stride 0).
    func batchDims(_ batchRank: Int) -> (shape: [Int], strides: [Int]) {
        let pad = batchRank - (rank - 2)
        return ([Int](repeating: 1, count: pad) + shape.prefix(rank - 2),
                [Int](repeating: 0, count: pad) + strides.prefix(rank - 2))
    }

    /// Batched matrix product `a[..., m, k] · b[..., k, n] → [..., m, n]`.
    ///
    /// The last two axes are the matrices; a view from ``transposed()``, ``slice(axis:_:)`` or
    /// ``rows(_:)`` is passed to BLAS as a transpose flag, offset and leading dimension, not
    /// copied. Leading (batch) axes are aligned from the right; on each, the output has the
    /// larger size and each operand's size must divide it: operand index = output index / (out /
    /// size). Size 1 is ordinary broadcasting; `a: [B, H, N, k]` with `b: [B, Hkv, k, n]` and
    /// `H % Hkv == 0` gives the MQA/GQA grouping (query head h uses KV head h / (H / Hkv)).
    /// A single product uses OpenBLAS's own threads.
    public static func matmul(_ a: Tensor, _ b: Tensor) throws -> Tensor {
        var out = try Tensor(uninitialized: try matmulShape(a, b))
        try matmul(a, b, into: &out)
        return out
    }

    /// The result shape of ``matmul(_:_:)``, or the error it would throw.
    public static func matmulShape(_ a: Tensor, _ b: Tensor) throws -> [Int] {
        guard a.rank >= 2, b.rank >= 2 else {
            throw TensorError.shapeMismatch(operation: "matmul", shapes: [a.shape, b.shape], expected: "operands of rank >= 2")
        }
        let m = a.shape[a.rank - 2], k = a.shape[a.rank - 1]
        let kb = b.shape[b.rank - 2], n = b.shape[b.rank - 1]
        guard k == kb else {
            throw TensorError.shapeMismatch(operation: "matmul", shapes: [a.shape, b.shape],
                                            expected: "equal inner dimensions (\(k) and \(kb))")
        }
        let batchRank = max(a.rank, b.rank) - 2
        func batchDims(_ t: Tensor) -> (shape: [Int], strides: [Int]) { t.batchDims(batchRank) }
        let aShape = batchDims(a).shape, bShape = batchDims(b).shape
        var outBatch = [Int]()
        for i in 0..<batchRank {
            let x = aShape[i], y = bShape[i], o = max(x, y)
            guard x > 0, y > 0, o % x == 0, o % y == 0 else {
                throw TensorError.shapeMismatch(operation: "matmul", shapes: [a.shape, b.shape],
                                                expected: "batch axis \(i)'s sizes (\(x) and \(y)) to divide each other")
            }
            outBatch.append(o)
        }
        return outBatch + [m, n]
    }

    /// ``matmul(_:_:)`` into an existing contiguous tensor of the result shape (no allocation:
    /// for loops that reuse their output).
    public static func matmul(_ a: Tensor, _ b: Tensor, into out: inout Tensor) throws {
        let shape = try matmulShape(a, b)
        guard out.shape == shape else {
            throw TensorError.shapeMismatch(operation: "matmul(into:)", shapes: [out.shape],
                                            expected: "the product's shape \(shape)")
        }
        out.makeUnique()
        let m = shape[shape.count - 2], n = shape[shape.count - 1], k = a.shape[a.rank - 1]
        let batchRank = shape.count - 2
        let outBatch = Array(shape.prefix(batchRank))
        func batchDims(_ t: Tensor) -> (shape: [Int], strides: [Int]) { t.batchDims(batchRank) }
        let aShape = batchDims(a).shape, bShape = batchDims(b).shape
        // A view BLAS cannot address (neither of the last two strides is 1) is copied once.
        let aSrc = a.matrixOperand() == nil ? a.contiguous() : a
        let bSrc = b.matrixOperand() == nil ? b.contiguous() : b
        let aOp = aSrc.matrixOperand()!, bOp = bSrc.matrixOperand()!
        let aS = batchDims(aSrc).strides, bS = batchDims(bSrc).strides
        let batches = outBatch.reduce(1, *)
        let outStride = m * n
        guard out.count > 0 else { return }
        aSrc.withUnsafePointer { pa in
            bSrc.withUnsafePointer { pb in
                var index = [Int](repeating: 0, count: batchRank)
                for bi in 0..<batches {
                    var oa = 0, ob = 0
                    for i in 0..<batchRank {
                        oa += index[i] / (outBatch[i] / aShape[i]) * aS[i]
                        ob += index[i] / (outBatch[i] / bShape[i]) * bS[i]
                    }
                    if k == 0 {
                        (out.storage.pointer + bi * outStride).initialize(repeating: 0, count: outStride)
                    } else {
                        BLAS.sgemm(aOp.transpose, bOp.transpose, m: m, n: n, k: k,
                                   a: pa + oa, lda: aOp.ld, b: pb + ob, ldb: bOp.ld,
                                   c: out.storage.pointer + bi * outStride, ldc: n)
                    }
                    _ = advance(&index, over: outBatch, axes: batchRank)
                }
            }
        }
    }
}
