import AttentionTensor

extension Tensor {
    /// Self when the last axis is contiguous (BLAS can read it with a leading dimension),
    /// otherwise a contiguous copy.
    func lastAxisContiguous() -> Tensor {
        strides.last == 1 || shape.last == 1 ? self : contiguous()
    }

    /// Copies `rows` (`[B, H, n, dv]`) into this `[B, H, N, dv]` tensor at row offset `at`.
    mutating func copyRows(from rows: Tensor, at offset: Int) throws {
        guard rank == 4, rows.rank == 4, rows.shape[0] == shape[0], rows.shape[1] == shape[1],
              rows.shape[3] == shape[3], offset + rows.shape[2] <= shape[2] else {
            throw TensorError.shapeMismatch("cannot place rows \(rows.shape) into \(shape) at \(offset)")
        }
        let src = rows.contiguous()
        let (B, H, n, dv, N) = (shape[0], shape[1], rows.shape[2], shape[3], shape[2])
        withUnsafeMutableBufferPointer { dst in
            src.withUnsafePointer { p in
                for bh in 0..<(B * H) {
                    (dst.baseAddress! + (bh * N + offset) * dv).update(from: p + bh * n * dv, count: n * dv)
                }
            }
        }
    }
}
