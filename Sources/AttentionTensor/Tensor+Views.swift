/// Views: sub-ranges and transposes that share storage (no element is copied).
extension Tensor {
    /// The elements with index in `range` along `axis` (negative axes count from the end).
    public func slice(axis: Int, _ range: Range<Int>) throws -> Tensor {
        let a = axis < 0 ? axis + rank : axis
        guard a >= 0, a < rank else { throw TensorError.outOfRange(argument: "axis", value: "\(axis)", bounds: "-\(rank)..<\(rank) (a rank-\(rank) tensor)") }
        guard range.lowerBound >= 0, range.upperBound <= shape[a] else {
            throw TensorError.outOfRange(argument: "range on axis \(a)", value: "\(range)", bounds: "0..<\(shape[a])")
        }
        var view = self
        view.offset += range.lowerBound * strides[a]
        view.shape[a] = range.count
        return view
    }

    /// Batch range of a `[B, ...]` tensor (axis 0).
    public func batches(_ range: Range<Int>) throws -> Tensor { try slice(axis: 0, range) }
    /// Head range of a `[B, H, N, d]` tensor (axis 1).
    public func heads(_ range: Range<Int>) throws -> Tensor { try slice(axis: 1, range) }
    /// Row range (axis -2): query or key positions of a `[..., N, d]` tensor.
    public func rows(_ range: Range<Int>) throws -> Tensor { try slice(axis: -2, range) }

    /// The last two axes swapped, as a view (strides swapped). ``matmul(_:_:)`` turns it into a
    /// BLAS transpose flag.
    public func transposed() -> Tensor {
        precondition(rank >= 2, "transposed() needs rank >= 2")
        var view = self
        view.shape.swapAt(rank - 1, rank - 2)
        view.strides.swapAt(rank - 1, rank - 2)
        return view
    }

    /// The axes in the order `axes` (a permutation of `0 ..< rank`), as a view: axis i of the
    /// result is axis `axes[i]` of this tensor. `[B, T, H, d]` permuted by `[0, 2, 1, 3]` is the
    /// `[B, H, T, d]` view attention reads (last axis still contiguous).
    public func permuted(_ axes: [Int]) throws -> Tensor {
        guard axes.count == rank, Set(axes) == Set(0..<rank) else {
            throw TensorError.outOfRange(argument: "axes", value: "\(axes)", bounds: "a permutation of 0..<\(rank)")
        }
        var view = self
        view.shape = axes.map { shape[$0] }
        view.strides = axes.map { strides[$0] }
        return view
    }
}
