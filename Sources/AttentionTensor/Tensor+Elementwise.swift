import CAttentionKernels

/// Vectorised elementwise operations (the C kernels in `CAttentionKernels`, dispatched at load
/// time to AVX-512, AVX2 or baseline code; ``VectorKernels/isa`` says which).
public enum VectorKernels {
    /// The instruction set the elementwise kernels run with on this CPU.
    public static var isa: String { String(cString: ak_kernel_isa()) }
}

/// An additive or structural mask for a row softmax over the last axis.
public enum SoftmaxMask: Sendable {
    /// Every column takes part.
    case none
    /// Row r keeps its first `validColumns[r]` columns; the rest get probability 0. One entry per
    /// row of the flattened `[rows, cols]` view.
    case prefix([Int32])
    /// Added to the scores first (same shape as the input, or broadcast over leading axes);
    /// `-infinity` masks an element.
    case additive(Tensor)
}

extension Tensor {
    private func mapContiguous(_ f: (UnsafePointer<Float>, UnsafeMutablePointer<Float>, Int) -> Void) -> Tensor {
        let src = contiguous()
        var out = try! Tensor(uninitialized: shape)   // same size as an existing tensor
        out.withUnsafeMutableBufferPointer { o in
            src.withUnsafePointer { f($0, o.baseAddress!, count) }
        }
        return out
    }

    /// Elementwise `exp` (vectorised; at most 2 ULP from the correctly rounded result over
    /// [-87.3, 88.7], 0 below).
    public func exp() -> Tensor { mapContiguous { ak_exp($0, $1, $2) } }
    /// Elementwise `elu(x) + 1`, the positive feature map of linear attention.
    public func elu1() -> Tensor { mapContiguous { ak_elu1($0, $1, $2) } }
    /// Elementwise `max(x, 0)`.
    public func relu() -> Tensor { mapContiguous { ak_relu($0, $1, $2) } }
    /// Elementwise product with a scalar.
    public func scaled(by alpha: Float) -> Tensor {
        mapContiguous { src, dst, n in
            dst.update(from: src, count: n)
            ak_scale(dst, n, alpha)
        }
    }
    /// Elementwise sum of two tensors of the same shape.
    public static func + (lhs: Tensor, rhs: Tensor) throws -> Tensor {
        guard lhs.shape == rhs.shape else {
            throw TensorError.shapeMismatch(operation: "+", shapes: [lhs.shape, rhs.shape], expected: "equal shapes")
        }
        var out = lhs.contiguous()
        let r = rhs.contiguous()
        out.withUnsafeMutableBufferPointer { o in r.withUnsafePointer { ak_add(o.baseAddress!, $0, o.count) } }
        return out
    }

    /// Softmax over the last axis, with an optional mask. Rows whose columns are all masked
    /// come out as zeros (never NaN); logits of any finite size are safe (the row max is
    /// subtracted first).
    public func softmax(mask: SoftmaxMask = .none) throws -> Tensor {
        guard rank >= 1 else { throw TensorError.invalidShape(shape) }
        let cols = shape[rank - 1]
        let rows = cols == 0 ? 0 : count / cols
        var out = contiguous()
        switch mask {
        case .none:
            break
        case .prefix(let valid):
            guard valid.count == rows else {
                throw TensorError.shapeMismatch(operation: "softmax prefix mask", shapes: [shape, [valid.count]],
                                                expected: "one valid count per row (\(rows))")
            }
        case .additive(let bias):
            guard bias.rank <= rank, Array(shape.suffix(bias.rank)) == bias.shape, bias.rank >= 1 else {
                throw TensorError.shapeMismatch(operation: "softmax additive mask", shapes: [shape, bias.shape],
                                                expected: "a mask of rank >= 1 equal to the tensor's trailing axes")
            }
            let b = bias.contiguous()
            let n = b.count
            out.withUnsafeMutableBufferPointer { o in
                b.withUnsafePointer { pb in
                    var i = 0
                    while i < o.count { ak_add(o.baseAddress! + i, pb, n); i += n }
                }
            }
        }
        out.withUnsafeMutableBufferPointer { o in
            if case .prefix(let valid) = mask {
                valid.withUnsafeBufferPointer { v in ak_softmax_rows(o.baseAddress!, rows, cols, cols, v.baseAddress!) }
            } else {
                ak_softmax_rows(o.baseAddress!, rows, cols, cols, nil)
            }
        }
        return out
    }
}

extension Tensor {
    /// The index of the first NaN or ±Inf element (row-major order), or nil when every element is
    /// finite. One vectorised pass over the rows, read through the strides.
    public func firstNonFiniteIndex() -> [Int]? { scanValues().invalidIndex }

    /// One vectorised pass over the elements (read through the strides): the index of the first
    /// NaN or +Inf (and -Inf unless `allowNegativeInfinity`, which lets a bias mask entries), and
    /// the largest magnitude among the accepted finite elements (0 for an empty tensor). The
    /// magnitudes bound the intermediates of a computation before it runs (overflow checks).
    public func scanValues(allowNegativeInfinity: Bool = false) -> (invalidIndex: [Int]?, maxMagnitude: Float) {
        guard count > 0 else { return (nil, 0) }
        guard rank > 0 else {
            let x = self[]
            let ok = x.isFinite || (allowNegativeInfinity && x == -.infinity)
            return (ok ? nil : [], x.isFinite ? abs(x) : 0)
        }
        if strides[rank - 1] != 1 && shape[rank - 1] > 1 {
            return contiguous().scanValues(allowNegativeInfinity: allowNegativeInfinity)
        }
        // The longest suffix of axes laid out contiguously is scanned in one call (a KV cache view
        // [B, Hkv, length, d] is one call per head, not one per row).
        var split = rank - 1, run = shape[rank - 1]
        while split > 0 && (shape[split - 1] == 1 || strides[split - 1] == run) {
            run *= shape[split - 1]
            split -= 1
        }
        var outer = [Int](repeating: 0, count: split)
        var largest: Float = 0
        let allow: Int32 = allowNegativeInfinity ? 1 : 0
        return withUnsafePointer { base in
            while true {
                var offset = 0
                for i in 0..<split { offset += outer[i] * strides[i] }
                let j = ak_scan_values(base + offset, run, allow, &largest)
                if j >= 0 {
                    // Unflatten j over the contiguous suffix.
                    var index = outer + [Int](repeating: 0, count: rank - split)
                    var rest = j
                    for axis in stride(from: rank - 1, through: split, by: -1) {
                        index[axis] = rest % shape[axis]
                        rest /= shape[axis]
                    }
                    return (index, largest)
                }
                if !advance(&outer, over: shape, axes: split) { return (nil, largest) }
            }
        }
    }
}
